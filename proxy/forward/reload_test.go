package forward_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/proxy/forward"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// SetUpstreams while running: a new upstream gets a listener at once; a changed listen address
// moves the listener while a connection on the old one runs on through its drain; a removed
// upstream stops accepting and its open connection is closed at the end of the drain; an
// address that cannot be bound is an error and the old listener stays.
func TestSetUpstreams(t *testing.T) {
	srv := newBackend(t, nil)
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	setHealthy(tb, srv.instance("s"))
	f, err := forward.New(forward.Options{Source: tb})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
		}
	}()
	if f.Addr("api") != nil {
		t.Fatal("a listener before any upstream")
	}
	cfg := forward.Config{Listen: "127.0.0.1:0", Drain: time.Second}
	if err := f.SetUpstreams(map[string]forward.Config{"api": cfg}); err != nil {
		t.Fatal(err)
	}
	first := f.Addr("api").String()
	if err := roundTrip(first, "new upstream"); err != nil {
		t.Fatal(err)
	}
	kept, err := net.Dial("tcp", first)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	if err := ping(kept, "kept"); err != nil {
		t.Fatal(err)
	}

	// The same settings again, or other timeouts: the listener stays.
	cfg.IdleTimeout = time.Minute
	if err := f.SetUpstreams(map[string]forward.Config{"api": cfg}); err != nil {
		t.Fatal(err)
	}
	if got := f.Addr("api").String(); got != first {
		t.Fatalf("listener moved from %s to %s on a change of timeouts", first, got)
	}

	// An address taken by someone else: refused, the old listener keeps serving.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	bad := cfg
	bad.Listen = taken.Addr().String()
	if err := f.SetUpstreams(map[string]forward.Config{"api": bad}); err == nil {
		t.Fatal("no error for an address in use")
	}
	if err := roundTrip(first, "still here"); err != nil {
		t.Fatalf("old listener after a refused move: %v", err)
	}

	// A new address: new connections there, the old listener closed, the kept connection drains.
	moved := cfg
	moved.Listen = "127.0.0.2:0" // another address of the loopback
	moved.Drain = time.Hour      // the settings of the new listener; the old one drains on its own
	if err := f.SetUpstreams(map[string]forward.Config{"api": moved}); err != nil {
		t.Fatal(err)
	}
	second := f.Addr("api").String()
	if second == first {
		t.Fatal("listener did not move")
	}
	if err := roundTrip(second, "moved"); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", first); err == nil {
		c.Close()
		t.Fatal("old address still accepts")
	}
	if err := ping(kept, "during the drain"); err != nil {
		t.Fatalf("kept connection during the drain: %v", err)
	}
	waitClosed(t, kept, 10*time.Second)

	// Removed: no listener, no connection.
	if err := f.SetUpstreams(nil); err != nil {
		t.Fatal(err)
	}
	if f.Addr("api") != nil {
		t.Fatal("listener left after removal")
	}
	if c, err := net.Dial("tcp", second); err == nil {
		c.Close()
		t.Fatal("removed upstream still accepts")
	}
}
