package forward_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/forward"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend is a real TCP server on loopback; by default it echoes and passes the half-close on.
type backend struct {
	t       testing.TB
	addr    string
	handle  func(*net.TCPConn)
	accepts atomic.Int64

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

func newBackend(t testing.TB, handle func(*net.TCPConn)) *backend {
	t.Helper()
	if handle == nil {
		handle = echo
	}
	b := &backend{t: t, handle: handle, conns: map[net.Conn]struct{}{}}
	b.start("127.0.0.1:0")
	t.Cleanup(b.kill)
	return b
}

func (b *backend) start(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.mu.Lock()
	b.ln, b.addr = ln, ln.Addr().String()
	b.mu.Unlock()
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepts.Add(1)
			b.mu.Lock()
			b.conns[c] = struct{}{}
			b.mu.Unlock()
			b.wg.Go(func() {
				b.handle(c.(*net.TCPConn))
				c.Close()
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
			})
		}
	})
}

// kill is a SIGKILL as clients see it: the listener closes and every connection is reset.
func (b *backend) kill() {
	b.mu.Lock()
	if b.ln != nil {
		b.ln.Close()
		b.ln = nil
	}
	for c := range b.conns {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// restart listens again on the same address.
func (b *backend) restart() { b.start(b.addr) }

func (b *backend) instance(id string) discovery.Instance {
	host, port, _ := net.SplitHostPort(b.addr)
	p, _ := strconv.Atoi(port)
	return discovery.Instance{ID: id, Address: host, Port: p, Weight: 1}
}

// membership of one upstream, "api".
func membership(ins ...discovery.Instance) discovery.Membership {
	return discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"api": {Name: "api", Instances: ins}}}
}

// healthyTable serves every given instance as healthy.
func setHealthy(tb *table.Table, ins ...discovery.Instance) {
	st := map[discovery.Key]health.Status{}
	for _, in := range ins {
		st[discovery.Key{Upstream: "api", ID: in.ID}] = health.Status{State: health.Healthy, Stats: &health.Stats{}}
	}
	tb.SetMembership(membership(ins...), st)
}

// fwd is a forwarder of upstream "api" under test.
type fwd struct {
	*forward.Forwarder
	addr   string
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func startForwarder(t testing.TB, src forward.Source, rep forward.Reporter, cfg forward.Config) *fwd {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen = ln.Addr().String()
	reg := prometheus.NewRegistry()
	f, err := forward.New(forward.Options{Upstreams: map[string]forward.Config{"api": cfg}, Source: src,
		Reporter: rep, Registerer: reg, Listeners: map[string]net.Listener{"api": ln}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	x := &fwd{Forwarder: f, addr: cfg.Listen, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { x.done <- f.Run(ctx) }()
	t.Cleanup(func() { x.stop(t, 10*time.Second) })
	return x
}

// stop cancels Run and waits for it to return.
func (x *fwd) stop(t testing.TB, within time.Duration) {
	x.cancel()
	select {
	case err, ok := <-x.done:
		if ok && err != nil {
			t.Errorf("Run: %v", err)
		}
		if ok {
			close(x.done)
		}
	case <-time.After(within):
		t.Fatalf("Run did not return within %s", within)
	}
}

// roundTrip connects, sends msg, half-closes and reads the whole echo.
func roundTrip(addr, msg string) error {
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
		return errors.New("echo: got " + strconv.Quote(string(got)) + ", want " + strconv.Quote(msg))
	}
	return nil
}

// ping sends msg on a kept connection and reads it back.
func ping(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch")
	}
	return nil
}

// waitClosed waits until the peer closes c (EOF or reset).
func waitClosed(t testing.TB, c net.Conn, within time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %s", within)
	}
}
