package admin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// stream is one open GET /v1/events.
type stream struct {
	resp *http.Response
	rd   *bufio.Reader
}

func openEvents(t *testing.T, ctx context.Context, url string) (*stream, int) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, resp.StatusCode
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	return &stream{resp: resp, rd: bufio.NewReader(resp.Body)}, resp.StatusCode
}

// next reads the next "table" event (the read is bounded by the request's context).
func (s *stream) next(t *testing.T) admin.Table {
	t.Helper()
	event := ""
	for {
		line, err := s.rd.ReadString('\n')
		if err != nil {
			t.Fatalf("read event stream: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && event == "table":
			var tab admin.Table
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &tab); err != nil {
				t.Fatalf("event data: %v", err)
			}
			return tab
		}
	}
}

func instance(tab admin.Table, upstream, id string) *admin.Instance {
	for _, u := range tab.Upstreams {
		for i := range u.Instances {
			if u.Name == upstream && u.Instances[i].ID == id {
				return &u.Instances[i]
			}
		}
	}
	return nil
}

// TestEventsPushChanges: the stream's first event is the current view; a status change is
// pushed as a later event that carries the new state and the transition with its cause, and
// probe results show up as samples.
func TestEventsPushChanges(t *testing.T) {
	tb := fixture()
	base := serve(t, tb, prometheus.NewRegistry())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, code := openEvents(t, ctx, base+"/v1/events")
	if s == nil {
		t.Fatalf("GET /v1/events: %d", code)
	}
	defer s.resp.Body.Close()
	if first := s.next(t); first.Version != tb.Snapshot().Version || instance(first, "api", "a").State != "unknown" {
		t.Fatalf("first event: version %d (table %d), a = %+v", first.Version, tb.Snapshot().Version, instance(first, "api", "a"))
	}

	stats := new(health.Stats)
	stats.Record(time.Now(), 2*time.Millisecond, nil)
	tb.SetStatus(discovery.Key{Upstream: "api", ID: "a"}, health.Status{State: health.Healthy, Stats: stats, Since: time.Now()})
	stats.Record(time.Now(), 3*time.Millisecond, nil)
	tb.SetStatus(discovery.Key{Upstream: "api", ID: "b"}, health.Status{State: health.Unhealthy, Reason: "connection refused", Stats: new(health.Stats), Since: time.Now()})
	for {
		tab := s.next(t)
		a, b := instance(tab, "api", "a"), instance(tab, "api", "b")
		if b.State != "unhealthy" || len(a.Samples) == 0 || len(b.Transitions) == 0 {
			continue
		}
		last := b.Transitions[len(b.Transitions)-1]
		if a.State != "healthy" || last.To != "unhealthy" || last.Cause != "connection refused" || a.Samples[len(a.Samples)-1].LatencyMS != 3 {
			t.Errorf("a = %+v\nb transitions = %+v", a, b.Transitions)
		}
		if n := len(tab.Transitions); n < 2 || tab.Transitions[n-1].ID != "b" || tab.Transitions[n-2].ID != "a" {
			t.Errorf("recent transitions = %+v, want a's change and then b's last", tab.Transitions)
		}
		return
	}
}

// TestEventsGuardAndLimit: the stream answers only to this vigil's names and same-origin
// pages, holds at most DefaultMaxSubscribers streams, and lets every closed one go, leaving
// no goroutine behind.
func TestEventsGuardAndLimit(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	tb := fixture()
	s := admin.New(admin.Config{Listen: "127.0.0.1:0"}, tb, prometheus.NewRegistry(), nil)
	addrc := make(chan net.Addr, 1)
	s.OnListen = func(a net.Addr) { addrc <- a }
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(runCtx) }()
	defer func() {
		stop()
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
		http.DefaultClient.CloseIdleConnections()
	}()
	var base string
	select {
	case a := <-addrc:
		base = "http://" + a.String()
	case <-time.After(5 * time.Second):
		t.Fatal("admin did not start")
	}

	for _, h := range []struct{ host, origin string }{{"evil.example", ""}, {"", "http://evil.example"}} {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/events", nil)
		if h.host != "" {
			req.Host = h.host
		}
		if h.origin != "" {
			req.Header.Set("Origin", h.origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("host %q origin %q: %d, want 403", h.host, h.origin, resp.StatusCode)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var open []*stream
	for range admin.DefaultMaxSubscribers {
		st, code := openEvents(t, ctx, base+"/v1/events")
		if st == nil {
			t.Fatalf("stream %d: %d", len(open), code)
		}
		st.next(t)
		open = append(open, st)
	}
	if st, code := openEvents(t, ctx, base+"/v1/events"); st != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("stream over the limit: %d, want 503", code)
	}
	// Slow readers: none of the streams is read while the table changes; the table goes on.
	for i := range 100 {
		state := health.Healthy
		if i%2 == 1 {
			state = health.Unhealthy
		}
		tb.SetStatus(discovery.Key{Upstream: "api", ID: "a"}, health.Status{State: state, Since: time.Now()})
	}
	if got := s.Subscribers(); got != admin.DefaultMaxSubscribers {
		t.Errorf("subscribers = %d, want %d", got, admin.DefaultMaxSubscribers)
	}
	// A stream that reads again gets the latest view (coalesced), not a backlog.
	want := tb.Snapshot().Version
	for {
		if tab := open[0].next(t); tab.Version == want {
			break
		} else if tab.Version > want {
			t.Fatalf("version %d after %d", tab.Version, want)
		}
	}
	for _, st := range open {
		st.resp.Body.Close()
	}
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool { return s.Subscribers() == 0 }, "closed streams are still subscribed")
	if st, code := openEvents(t, ctx, base+"/v1/events"); st == nil {
		t.Errorf("stream after the others closed: %d", code)
	} else {
		st.resp.Body.Close()
	}
}
