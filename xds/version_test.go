package xds

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestEpochMonotonicAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "version")
	now := time.Unix(1000, 0)
	e1, err := nextEpoch(path, now)
	if err != nil || e1 != 1000 {
		t.Fatalf("first epoch %d, %v", e1, err)
	}
	// A restart in the same second, or with the clock set back, still moves forward.
	e2, _ := nextEpoch(path, now)
	e3, _ := nextEpoch(path, now.Add(-time.Hour))
	if e2 != 1001 || e3 != 1002 {
		t.Fatalf("epochs %d, %d after %d", e2, e3, e1)
	}
	if e4, _ := nextEpoch(path, time.Unix(5000, 0)); e4 != 5000 {
		t.Fatalf("epoch %d after the clock moved on", e4)
	}
	if e, _ := nextEpoch("", time.Unix(7, 0)); e != 7 {
		t.Fatalf("time-based epoch %d", e)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := nextEpoch(path, now); err == nil {
		t.Fatal("no error for a corrupt version file")
	}
}
