package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/forward"
)

// echoServer is a loopback TCP echo server that can die like a SIGKILLed process (listener
// closed, connections reset) and come back on the same port.
type echoServer struct {
	t       *testing.T
	addr    string
	accepts atomic.Int64
	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newEchoServer(t *testing.T) *echoServer {
	e := &echoServer{t: t, addr: "127.0.0.1:0", conns: map[net.Conn]struct{}{}}
	e.start()
	t.Cleanup(e.kill)
	return e
}

func (e *echoServer) start() {
	ln, err := net.Listen("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.mu.Lock()
	e.ln, e.addr = ln, ln.Addr().String()
	e.mu.Unlock()
	e.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepts.Add(1)
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			e.wg.Go(func() {
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				c.Close()
				e.mu.Lock()
				delete(e.conns, c)
				e.mu.Unlock()
			})
		}
	})
}

func (e *echoServer) kill() {
	e.mu.Lock()
	if e.ln != nil {
		e.ln.Close()
		e.ln = nil
	}
	for c := range e.conns {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

func (e *echoServer) port() int {
	_, p, _ := net.SplitHostPort(e.addr)
	var n int
	fmt.Sscan(p, &n)
	return n
}

// echoOnce connects to addr, sends msg, half-closes and reads the whole echo.
func echoOnce(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}

// forwardConfig is a vigil configuration with upstream api forwarded, on the given backends.
func forwardConfig(forward string, ports ...int) string {
	var b strings.Builder
	b.WriteString(`
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
defaults:
  check: {kind: tcp, interval: 1m, unhealthy_interval: 300ms, edge_interval: 20ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1}
upstreams:
  - name: api
`)
	if forward != "" {
		fmt.Fprintf(&b, "    forward: %s\n", forward)
	}
	b.WriteString("    instances:\n")
	for _, p := range ports {
		fmt.Fprintf(&b, "      - {address: 127.0.0.1, port: %d}\n", p)
	}
	return b.String()
}

// vigil wired from its configuration forwards to two real echo servers; one dies (listener
// closed, connections reset) while a client opens connections in a bounded loop: no client
// connection fails, the dead one is unhealthy long before its next scheduled probe (1m), and it
// gets connections again once it is back.
func TestForwardEndToEnd(t *testing.T) {
	a, b := newEchoServer(t), newEchoServer(t)
	var v *app
	base := startApp(t, forwardConfig(`{listen: "127.0.0.1:0", drain: 1s}`, a.port(), b.port()), func(x *app) { v = x })
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		return upstreams(t, base)["api"].Served == 2
	}, "both instances served")
	addr := v.forward.Addr("api").String()
	for i := range 20 {
		if err := echoOnce(addr, fmt.Sprintf("before %d", i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if a.accepts.Load() == 0 || b.accepts.Load() == 0 {
		t.Errorf("not balanced: a %d, b %d connections", a.accepts.Load(), b.accepts.Load())
	}

	a.kill()
	for i := range 300 {
		if err := echoOnce(addr, fmt.Sprintf("during %d", i)); err != nil {
			t.Fatalf("connection %d after the kill: %v", i, err)
		}
	}
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		return state(t, base, "api", a.port()).State == "unhealthy"
	}, "killed instance unhealthy")
	t.Logf("reason: %q", state(t, base, "api", a.port()).Reason)

	a.start()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		return upstreams(t, base)["api"].Served == 2
	}, "revived instance served")
	before := a.accepts.Load()
	for i := range 50 {
		if err := echoOnce(addr, fmt.Sprintf("after %d", i)); err != nil {
			t.Fatalf("connection %d after the revival: %v", i, err)
		}
	}
	if a.accepts.Load() == before {
		t.Error("no connection went to the revived instance")
	}
}

// lockedBuffer is a log sink that tests read while vigil writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A reload adds a forward listener, moves it (the old address stops accepting), warns when the
// new address cannot be taken (the old listener stays), and removes it.
func TestForwardReload(t *testing.T) {
	e := newEchoServer(t)
	hup := make(chan os.Signal, 1)
	next := make(chan string, 1)
	parsed := make(chan error, 1)
	logs := &lockedBuffer{}
	var v *app
	base := startApp(t, forwardConfig("", e.port()), func(x *app) {
		v = x
		x.log = slog.New(slog.NewTextHandler(logs, nil))
		x.hup = hup
		x.reload = func() (*configs.Config, error) {
			cfg, err := configs.Parse([]byte(<-next))
			parsed <- err
			return cfg, err
		}
	})
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		return upstreams(t, base)["api"].Served == 1
	}, "instance served")
	if v.forward.Addr("api") != nil {
		t.Fatal("a forward listener without a forward block")
	}
	reload := func(cfg string) {
		t.Helper()
		next <- cfg
		hup <- syscall.SIGHUP
		select {
		case err := <-parsed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("reload not read")
		}
	}
	// applied: the reload that was read has been applied once the log says so.
	applied := func(n int) {
		t.Helper()
		testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool {
			return strings.Count(logs.String(), "configuration reloaded") >= n
		}, "reload applied")
	}

	reload(forwardConfig(`{listen: "127.0.0.1:0"}`, e.port()))
	applied(1)
	first := v.forward.Addr("api")
	if first == nil {
		t.Fatal("no forward listener after the reload that added it")
	}
	if err := echoOnce(first.String(), "added"); err != nil {
		t.Fatal(err)
	}

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	reload(forwardConfig(fmt.Sprintf("{listen: %q}", taken.Addr()), e.port()))
	applied(2)
	if !strings.Contains(logs.String(), "forward listener could not be opened") {
		t.Errorf("no warning for a listen address in use; log:\n%s", logs)
	}
	if err := echoOnce(first.String(), "kept"); err != nil {
		t.Fatalf("old listener after a refused move: %v", err)
	}

	reload(forwardConfig(`{listen: "127.0.0.2:0"}`, e.port()))
	applied(3)
	second := v.forward.Addr("api")
	if second == nil || second.String() == first.String() {
		t.Fatalf("listener not moved: %v", second)
	}
	if err := echoOnce(second.String(), "moved"); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", first.String()); err == nil {
		c.Close()
		t.Error("old address still accepts")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Logf("old address: %v", err)
	}

	reload(forwardConfig("", e.port()))
	applied(4)
	if v.forward.Addr("api") != nil {
		t.Error("forward listener left after its block was removed")
	}
}

// The local service's reserved upstream never gets a forwarder, even if a configuration
// carried a forward block under its name.
func TestForwardsSkipLocal(t *testing.T) {
	fw := &configs.Config{Upstreams: []configs.Upstream{
		{Name: "api", Forward: &forward.Config{Listen: "127.0.0.1:0"}},
		{Name: localUpstream("web"), Forward: &forward.Config{Listen: "127.0.0.1:0"}},
		{Name: "db"},
	}}
	got := forwards(fw)
	if _, ok := got["api"]; !ok || len(got) != 1 {
		t.Errorf("forwarded upstreams %v, want only api", got)
	}
}
