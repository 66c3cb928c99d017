package chaos

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// TestChaos is the chaos run: its short form (about a minute of faults) runs in make test;
// make chaos runs it for VIGIL_CHAOS_DURATION (and VIGIL_CHAOS_SEED replays a run).
func TestChaos(t *testing.T) {
	consul := testutil.Need(t, "consul")
	testutil.Need(t, "python3")
	// The short form runs beside every other test package on 2 cores: a live instance starved of
	// CPU for half a second must not count as hung, so its checks are lenient and its window
	// longer. make chaos runs vigil at its default checks.
	// The grace after a (re)start is one interval (the first probes are spread over it) plus a
	// timeout and a second.
	d, check, window, grace := 60*time.Second, "{interval: 2s, unhealthy_interval: 2s, timeout: 1500ms}", 7*time.Second, 5*time.Second
	if s := os.Getenv("VIGIL_CHAOS_DURATION"); s != "" {
		check, window, grace = "{}", 4*time.Second, 3*time.Second
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			t.Fatalf("VIGIL_CHAOS_DURATION: %v", err)
		}
	} else if testing.Short() {
		t.Skip("the chaos run takes minutes")
	}
	var seed uint64
	if s := os.Getenv("VIGIL_CHAOS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("VIGIL_CHAOS_SEED: %v", err)
		}
	}
	// Not t.TempDir: the logs of a failed run are kept for reading.
	dir, err := os.MkdirTemp("", "vigil-chaos-")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	}()
	// vigil is built with the race detector: a race under faults is a violation too.
	vigil, err := buildGo(dir, "github.com/vigil-sidecar/vigil/cmd/vigil", "vigil", true)
	if err != nil {
		t.Fatal(err)
	}
	backend, err := buildGo(dir, "github.com/vigil-sidecar/vigil/internal/bench/failover/backend", "backend", false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+5*time.Minute)
	defer cancel()
	r, err := Run(ctx, Config{
		Dir: dir, Vigil: vigil, Backend: backend, Consul: consul, Duration: d, Seed: seed, Check: check,
		Window: window, Grace: grace, Recovered: 20 * time.Second,
		Log: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", r)
	if out := os.Getenv("VIGIL_CHAOS_REPORT"); out != "" {
		if err := os.WriteFile(out, []byte(r.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
	for _, f := range []string{faultKill, faultHang, faultLeader, faultConsulDown, faultVigilTerm, faultVigilKill, faultVigilNoConsul, faultCorruptState} {
		if r.Faults[f] == 0 {
			t.Errorf("no %q injected in %s", f, d)
		}
	}
	if n := r.TotalViolations(); n > 0 {
		t.Errorf("%d invariant violations (seed %d; replay with VIGIL_CHAOS_SEED=%d); logs kept in %s", n, r.Seed, r.Seed, dir)
	}
}

// TestSoak runs vigil for VIGIL_SOAK_DURATION (make soak; not in make test) under DNS, xDS and
// forwarder load, instance churn and reloads, and checks that its memory, goroutines and open
// fds stay flat.
func TestSoak(t *testing.T) {
	s := os.Getenv("VIGIL_SOAK_DURATION")
	if s == "" {
		t.Skip("make soak DURATION=... runs it")
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("VIGIL_SOAK_DURATION: %v", err)
	}
	consul := testutil.Need(t, "consul")
	dir := t.TempDir()
	// Not race-built: the race detector's own memory would hide vigil's.
	vigil, err := buildGo(dir, "github.com/vigil-sidecar/vigil/cmd/vigil", "vigil", false)
	if err != nil {
		t.Fatal(err)
	}
	backend, err := buildGo(dir, "github.com/vigil-sidecar/vigil/internal/bench/failover/backend", "backend", false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+5*time.Minute)
	defer cancel()
	every := max(d/120, 2*time.Second)
	r, err := Run(ctx, Config{
		Dir: dir, Vigil: vigil, Backend: backend, Consul: consul, Duration: d,
		Window: 4 * time.Second, Grace: 2 * time.Second, Recovered: 20 * time.Second,
		Soak: true, SampleEvery: every, Clients: 4, Log: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", r)
	if out := os.Getenv("VIGIL_CHAOS_REPORT"); out != "" {
		if err := os.WriteFile(out, []byte(r.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
	// Invariant violations are reported, not failed on: the soak loads the machine on purpose, and
	// a live instance starved of CPU past its probe timeout is judged hung. Resources must be flat.
	if n := r.TotalViolations(); n > 0 {
		t.Logf("%d invariant violations under the soak's load (see above)", n)
	}
	sl := r.Slopes
	if sl.Samples < 8 {
		t.Fatalf("only %d samples", sl.Samples)
	}
	// Flat: the last quarter's medians within a margin of the first quarter's (after warm-up).
	if sl.Goroutines[1] > sl.Goroutines[0]+25 {
		t.Errorf("goroutines grew from %.0f to %.0f", sl.Goroutines[0], sl.Goroutines[1])
	}
	if sl.FDs[1] > sl.FDs[0]+10 {
		t.Errorf("open fds grew from %.0f to %.0f", sl.FDs[0], sl.FDs[1])
	}
	if sl.RSSMB[1] > sl.RSSMB[0]*1.25+5 {
		t.Errorf("RSS grew from %.1f MB to %.1f MB", sl.RSSMB[0], sl.RSSMB[1])
	}
}
