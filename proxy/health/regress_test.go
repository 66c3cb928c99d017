package health

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
)

type mapSink struct {
	mu sync.Mutex
	st map[discovery.Key]Status
}

func (s *mapSink) SetMembership(_ discovery.Membership, st map[discovery.Key]Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = map[discovery.Key]Status{}
	for k, v := range st {
		s.st[k] = v
	}
}

func (s *mapSink) SetStatus(k discovery.Key, v Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st[k] = v
}

// TestStatusKeptAcrossReload: a verdict queued for the sink survives a reload that replaces the
// prober before the queue is flushed.
func TestStatusKeptAcrossReload(t *testing.T) {
	s := &mapSink{}
	chk := DefaultCheck()
	chk.Interval, chk.UnhealthyInterval = time.Hour, time.Hour
	c, err := NewChecker(Options{Sink: s, Default: chk})
	if err != nil {
		t.Fatal(err)
	}
	c.setMembership(discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"u": {Name: "u", Instances: []discovery.Instance{{ID: "i", Address: "127.0.0.1", Port: 1}}}}})
	p := c.ups["u"].probers["i"]
	p.mu.Lock()
	p.observe(time.Now(), errors.New("boom")) // a probe result, queued for the sink
	p.mu.Unlock()
	chk2 := chk
	chk2.Timeout = 600 * time.Millisecond
	c.SetChecks(chk2, nil) // the reload lands before the flush
	c.flush()
	if got := c.ups["u"].probers["i"].Status().State; got != Unhealthy {
		t.Fatalf("checker: %v, want unhealthy", got)
	}
	if got := s.st[discovery.Key{Upstream: "u", ID: "i"}].State; got != Unhealthy {
		t.Errorf("sink says %v while the checker says unhealthy: the queued change was dropped", got)
	}
}

// TestShutdownCutsHTTPProbeShort: Run returns promptly even while an HTTP probe with a long
// timeout waits for an answer that never comes.
func TestShutdownCutsHTTPProbeShort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	requested := make(chan net.Conn, 1)
	go func() { // accept, read the request, never answer
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			requested <- c
		}
	}()
	chk := DefaultCheck()
	chk.Kind = KindHTTP
	chk.Interval, chk.UnhealthyInterval, chk.Timeout, chk.EdgeInterval = 4*time.Second, 4*time.Second, 3*time.Second, time.Second
	mem := make(chan discovery.Membership, 1)
	mem <- discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{"u": {Name: "u",
		Instances: []discovery.Instance{{ID: "i", Address: "127.0.0.1", Port: ln.Addr().(*net.TCPAddr).Port}}}}}
	c, err := NewChecker(Options{Sink: &mapSink{}, Default: chk, Members: mem})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	var conn net.Conn
	select {
	case conn = <-requested: // the probe is now waiting for a response
	case <-time.After(15 * time.Second):
		t.Fatal("no probe request")
	}
	defer conn.Close()
	cancel()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Run did not return within a second of cancel: the HTTP probe waited out its 3s timeout")
	}
}
