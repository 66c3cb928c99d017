// Package testutil holds helpers shared by vigil's tests: real peers and loopback ports.
package testutil

import (
	"net"
	"os"
	"os/exec"
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

// FreePort returns a TCP port that is free on 127.0.0.1 right now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
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
