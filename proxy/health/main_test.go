package health_test

import (
	"errors"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

func TestMain(m *testing.M) {
	if os.Getenv(serverEnv) != "" {
		os.Exit(serveBench())
	}
	goleak.VerifyTestMain(m)
}

// sink records what the checker tells it and fails a test if it is called concurrently.
type sink struct {
	t       testing.TB
	busy    atomic.Bool
	mu      sync.Mutex
	st      map[discovery.Key]health.Status
	updates map[discovery.Key]int // SetStatus calls by key
	members int
}

func newSink(t testing.TB) *sink {
	return &sink{t: t, st: map[discovery.Key]health.Status{}, updates: map[discovery.Key]int{}}
}

func (s *sink) enter() {
	if s.busy.Swap(true) {
		s.t.Error("sink called from two goroutines at once")
	}
}

func (s *sink) SetMembership(m discovery.Membership, statuses map[discovery.Key]health.Status) {
	s.enter()
	defer s.busy.Store(false)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = maps.Clone(statuses)
	s.members++
}

func (s *sink) SetStatus(k discovery.Key, st health.Status) {
	s.enter()
	defer s.busy.Store(false)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.st[k]; !ok {
		s.t.Errorf("status of %s, not a member", k)
	}
	s.st[k] = st
	s.updates[k]++
}

func (s *sink) status(k discovery.Key) (health.Status, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.st[k]
	return st, ok
}

func (s *sink) updatesOf(k discovery.Key) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updates[k]
}

// harness runs a Checker for one test.
type harness struct {
	t       *testing.T
	c       *health.Checker
	sink    *sink
	members chan discovery.Membership
}

func start(t *testing.T, o health.Options) *harness {
	t.Helper()
	h := &harness{t: t, sink: newSink(t), members: make(chan discovery.Membership)}
	o.Sink, o.Members = h.sink, h.members
	c, err := health.NewChecker(o)
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	testutil.Run(t, c, 2*time.Second)
	return h
}

// set sends a membership of the given upstreams.
func (h *harness) set(ups map[string][]discovery.Instance) {
	h.t.Helper()
	m := discovery.Membership{Upstreams: map[string]*discovery.Upstream{}, Ready: true}
	for name, ins := range ups {
		m.Upstreams[name] = &discovery.Upstream{Name: name, Instances: ins}
	}
	select {
	case h.members <- m:
	case <-time.After(2 * time.Second):
		h.t.Fatal("checker did not take the membership within 2s")
	}
}

// wait waits until the sink has k in state want and returns its status.
func (h *harness) wait(k discovery.Key, want health.State, within time.Duration) health.Status {
	h.t.Helper()
	var st health.Status
	testutil.Eventually(h.t, within, 5*time.Millisecond, func() bool {
		var ok bool
		st, ok = h.sink.status(k)
		return ok && st.State == want
	}, k.String()+" to be "+want.String())
	return st
}

// fast is a check with short intervals and thresholds of one.
func fast(kind string) health.CheckConfig {
	c := health.DefaultCheck()
	c.Kind = kind
	c.Interval, c.UnhealthyInterval, c.EdgeInterval, c.Timeout = 300*time.Millisecond, 300*time.Millisecond, 20*time.Millisecond, 250*time.Millisecond
	c.HealthyThreshold, c.UnhealthyThreshold = 1, 1
	return c
}

// steady is a check for tests that must see no spurious failure even on a loaded machine: a long
// timeout, yet a quick first probe (within unhealthy_interval).
func steady(kind string) health.CheckConfig {
	c := fast(kind)
	c.Interval, c.Timeout = time.Second, 900*time.Millisecond
	c.UnhealthyInterval = c.Timeout + 10*time.Millisecond
	return c
}

var errTest = errors.New("test")
