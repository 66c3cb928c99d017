// Package testutil holds helpers shared by vigil's tests: real peers and loopback ports.
package testutil

import (
	"context"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// Need returns the path of the named program (looked up in PATH, where `make test` puts
// its tools folder). Without it the test is skipped, or, in CI (CI=true), fails.
func Need(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found in PATH (run the tests through `make test`, which installs it): %v", name, err)
	}
	t.Skipf("%s not found in PATH; `make test` installs it", name)
	return ""
}

// Eventually polls cond every tick until it is true or timeout passes, then fails with msg.
func Eventually(t testing.TB, timeout, tick time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("not within %s: %s", timeout, msg)
		case <-ticker.C:
		}
	}
}

// Runner is a long-lived part: Run returns when ctx ends.
type Runner interface {
	Run(ctx context.Context) error
}

// Running is a Runner started by Run.
type Running struct {
	done chan struct{}
	err  error
}

// Done is closed when Run has returned.
func (r *Running) Done() <-chan struct{} { return r.done }

// Err waits for Run to return and gives its error.
func (r *Running) Err() error { <-r.done; return r.err }

// Run runs r until the test ends; at cleanup it cancels r and fails the test unless Run
// returns nil within stopWithin.
func Run(t testing.TB, r Runner, stopWithin time.Duration) *Running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	run := &Running{done: make(chan struct{})}
	go func() {
		run.err = r.Run(ctx)
		close(run.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-run.done:
			if run.err != nil {
				t.Errorf("Run: %v", run.err)
			}
		case <-time.After(stopWithin):
			t.Errorf("Run did not return within %s of cancel", stopWithin)
		}
	})
	return run
}

// Listener listens on 127.0.0.1, accepts connections, holds them without a word until the test
// ends, and returns its address: a server that is up, or a hung one, as a client sees it.
func Listener(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}
