package forward_test

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/forward"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// A SIGKILL-like death of one instance while a client opens connections in a bounded loop: no
// client connection fails, the dead instance is unhealthy at once by the passive signal (long
// before its next scheduled probe), and it returns through the active probes once it is back.
func TestKillNoClientFails(t *testing.T) {
	a, b := newBackend(t, nil), newBackend(t, nil)
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	members := make(chan discovery.Membership, 1)
	chk := health.DefaultCheck()
	chk.Kind = "tcp"
	// The next scheduled probe of a healthy instance is a minute away; unhealthy ones are probed quickly.
	chk.Interval, chk.UnhealthyInterval, chk.EdgeInterval, chk.Timeout = time.Minute, 300*time.Millisecond, 20*time.Millisecond, 250*time.Millisecond
	chk.HealthyThreshold, chk.UnhealthyThreshold = 1, 1
	c, err := health.NewChecker(health.Options{Default: chk, Sink: tb, Members: members})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, c, 5*time.Second)
	members <- membership(a.instance("a"), b.instance("b"))
	served := func(n int) func() bool {
		return func() bool { u := tb.Snapshot().Lookup("api"); return u != nil && len(u.Served) == n }
	}
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, served(2), "both instances served")

	x := startForwarder(t, tb, c, forward.Config{})
	for i := range 20 {
		if err := roundTrip(x.addr, fmt.Sprintf("before %d", i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	kept, err := net.Dial("tcp", x.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	if err := ping(kept, "hello"); err != nil {
		t.Fatal(err)
	}

	a.kill()
	for i := range 200 {
		if err := roundTrip(x.addr, fmt.Sprintf("during %d", i)); err != nil {
			t.Fatalf("connection %d after the kill: %v", i, err)
		}
	}
	var st table.Instance
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		for _, in := range tb.Snapshot().Lookup("api").Instances {
			if in.ID == "a" {
				st = in
			}
		}
		return st.State == table.Unhealthy
	}, "a unhealthy")
	// The passive signal ejects ("passive: connect refused", kept while the probes it triggers
	// confirm), unless the health watch saw the death first (the probe's own error text).
	if !strings.Contains(st.Reason, "refused") {
		t.Errorf("reason %q", st.Reason)
	}
	// Refused connects are counted only when a dial reached the dead instance before the table
	// dropped it (the health watch may get there first): logged, not asserted.
	t.Logf("%g refused connects counted", testutil.Metric(t, x.reg, "vigil_forward_connect_failures_total", map[string]string{"reason": "refused"}))
	// The passive signal and the immediate probe race to mark the instance: at most one ejection
	// is passive (0 when the probe it triggered got there first).
	if n := testutil.Metric(t, x.reg, "vigil_forward_passive_ejections_total", nil); n > 1 {
		t.Errorf("%g passive ejections, want at most 1", n)
	}

	a.restart()
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, served(2), "a served again")
	before := a.accepts.Load()
	for i := range 50 {
		if err := roundTrip(x.addr, fmt.Sprintf("after %d", i)); err != nil {
			t.Fatalf("connection %d after the restart: %v", i, err)
		}
	}
	if a.accepts.Load() == before {
		t.Error("no connection went to a after it returned")
	}
	testutil.CheckMetrics(t, testutil.Exposition(t, x.reg))
}

// Half-closes pass through both ways: the client's EOF reaches the instance while the instance
// still answers, and the instance's EOF reaches the client while the client still sends.
func TestHalfClose(t *testing.T) {
	got := make(chan string, 1)
	srv := newBackend(t, func(c *net.TCPConn) {
		io.WriteString(c, "greeting")
		c.CloseWrite() // server -> client half-close first
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	setHealthy(tb, srv.instance("s"))
	x := startForwarder(t, tb, nil, forward.Config{})
	c, err := net.Dial("tcp", x.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c) // EOF from the server while our side is still open
	if err != nil || string(b) != "greeting" {
		t.Fatalf("read %q, %v", b, err)
	}
	if _, err := io.WriteString(c, "still talking"); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case s := <-got:
		if s != "still talking" {
			t.Errorf("server got %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server never saw the client's half-close")
	}

	// client -> server half-close: the echo of everything comes back after the client's EOF.
	echoSrv := newBackend(t, nil)
	setHealthy(tb, echoSrv.instance("e"))
	msg := strings.Repeat("x", 1<<20)
	if err := roundTrip(x.addr, msg); err != nil {
		t.Fatal(err)
	}
}

// A client that connects and sends nothing, and one that sends without end and never reads,
// are closed after idle_timeout, while other clients are served meanwhile.
func TestIdleTimeout(t *testing.T) {
	srv := newBackend(t, nil)
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	setHealthy(tb, srv.instance("s"))
	x := startForwarder(t, tb, nil, forward.Config{IdleTimeout: 300 * time.Millisecond})

	silent, err := net.Dial("tcp", x.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	flood, err := net.Dial("tcp", x.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	flooded := make(chan error, 1)
	go func() { // up to 1 GiB, never reading the echo
		buf := make([]byte, 1<<20)
		for range 1024 {
			flood.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := flood.Write(buf); err != nil {
				flooded <- err
				return
			}
		}
		flooded <- nil
	}()

	for i := range 20 {
		if err := roundTrip(x.addr, fmt.Sprint("other ", i)); err != nil {
			t.Fatalf("other client %d: %v", i, err)
		}
	}
	waitClosed(t, silent, 10*time.Second)
	select {
	case err := <-flooded:
		if err == nil {
			t.Fatal("1 GiB went through a client that never reads")
		}
		var ne net.Error
		if ok := asNetErr(err, &ne); ok && ne.Timeout() {
			t.Fatalf("the flooding client was never closed: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the flooding client is still writing")
	}
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		return testutil.Metric(t, x.reg, "vigil_forward_connections_active", nil) == 0
	}, "no connection left open")
}

// Past max_connections a connection is closed at once and counted; below it, served again.
func TestConnectionLimit(t *testing.T) {
	srv := newBackend(t, nil)
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	setHealthy(tb, srv.instance("s"))
	x := startForwarder(t, tb, nil, forward.Config{MaxConnections: 2})
	var open []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", x.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := ping(c, "hi"); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	// The excess connection is accepted and reset at once: the reset may reach the client
	// while it is still connecting, or afterwards as a closed connection.
	if extra, err := net.Dial("tcp", x.addr); err == nil {
		defer extra.Close()
		waitClosed(t, extra, 10*time.Second)
	}
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		return testutil.Metric(t, x.reg, "vigil_forward_refused_connections_total", map[string]string{"reason": "limit"}) >= 1
	}, "the excess connection to be refused")
	if n := testutil.Metric(t, x.reg, "vigil_forward_refused_connections_total", map[string]string{"reason": "limit"}); n != 1 {
		t.Errorf("%g refused at the limit, want 1", n)
	}
	open[0].Close()
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		return testutil.Metric(t, x.reg, "vigil_forward_connections_active", nil) == 1
	}, "the closed connection to end")
	if err := roundTrip(x.addr, "room again"); err != nil {
		t.Fatal(err)
	}
	if err := ping(open[1], "still"); err != nil {
		t.Fatal(err)
	}
}

// When an instance leaves the served set, new connections go elsewhere at once, open ones run on
// until the drain ends and are then closed.
func TestDrainOnRemoval(t *testing.T) {
	a, b := newBackend(t, nil), newBackend(t, nil)
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	setHealthy(tb, a.instance("a"))
	x := startForwarder(t, tb, nil, forward.Config{Drain: time.Second})
	c, err := net.Dial("tcp", x.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := ping(c, "one"); err != nil {
		t.Fatal(err)
	}
	setHealthy(tb, b.instance("b")) // a leaves
	if err := ping(c, "two"); err != nil {
		t.Fatalf("draining connection broke at once: %v", err)
	}
	for i := range 10 {
		if err := roundTrip(x.addr, fmt.Sprint("new ", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.accepts.Load(); n != 1 {
		t.Errorf("a accepted %d connections, want only the first", n)
	}
	waitClosed(t, c, 10*time.Second)
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		return testutil.Metric(t, x.reg, "vigil_forward_drained_connections_total", nil) == 1
	}, "one drained connection counted")
}

// On shutdown the listener stops accepting at once; open connections run on for the drain, are
// then closed, and Run returns.
func TestDrainOnShutdown(t *testing.T) {
	srv := newBackend(t, nil)
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	setHealthy(tb, srv.instance("s"))
	x := startForwarder(t, tb, nil, forward.Config{Drain: time.Second})
	c, err := net.Dial("tcp", x.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := ping(c, "one"); err != nil {
		t.Fatal(err)
	}
	x.cancel()
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		d, err := net.Dial("tcp", x.addr)
		if err == nil {
			d.Close()
		}
		return err != nil
	}, "the listener to stop accepting")
	if err := ping(c, "two"); err != nil {
		t.Fatalf("open connection broke at shutdown: %v", err)
	}
	waitClosed(t, c, 10*time.Second)
	select {
	case err := <-x.done:
		if err != nil {
			t.Fatal(err)
		}
		close(x.done)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
	if n := testutil.Metric(t, x.reg, "vigil_forward_drained_connections_total", nil); n != 1 {
		t.Errorf("%g drained, want 1", n)
	}
}

// With every instance down the client's connection is closed, after max_attempts connects.
func TestAllDown(t *testing.T) {
	a, b := newBackend(t, nil), newBackend(t, nil)
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	setHealthy(tb, a.instance("a"), b.instance("b"))
	a.kill()
	b.kill()
	x := startForwarder(t, tb, nil, forward.Config{MaxAttempts: 5})
	c, err := net.Dial("tcp", x.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitClosed(t, c, 10*time.Second)
	// two instances: two attempts (each instance once), one retry.
	if n := testutil.Metric(t, x.reg, "vigil_forward_connect_failures_total", nil); n != 2 {
		t.Errorf("%g connect failures, want 2", n)
	}
	if n := testutil.Metric(t, x.reg, "vigil_forward_retries_total", nil); n != 1 {
		t.Errorf("%g retries, want 1", n)
	}
}

// Least connections: with one instance holding many connections, new ones go to the other.
func TestLeastConnections(t *testing.T) {
	a, b := newBackend(t, nil), newBackend(t, nil)
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	setHealthy(tb, a.instance("a"))
	x := startForwarder(t, tb, nil, forward.Config{})
	var held []net.Conn
	for range 10 {
		c, err := net.Dial("tcp", x.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := ping(c, "x"); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	setHealthy(tb, a.instance("a"), b.instance("b"))
	var wg sync.WaitGroup
	for range 5 {
		c, err := net.Dial("tcp", x.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := ping(c, "y"); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if n := b.accepts.Load(); n != 5 {
		t.Errorf("b got %d of the 5 new connections, want all", n)
	}
}

func asNetErr(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}
