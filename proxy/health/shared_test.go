package health_test

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// sharer owns nothing and records this vigil's own verdicts.
type sharer struct {
	mu       sync.Mutex
	verdicts []health.State
}

func (s *sharer) Owns(discovery.Key, string) bool { return false }
func (s *sharer) Verdict(_ discovery.Key, _ string, st health.State, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.verdicts = append(s.verdicts, st)
}

// TestSharedVerdict: the owners' unhealthy verdict drops an instance, their healthy verdict
// restores it, and this vigil's own evidence of failure wins over their healthy verdict.
func TestSharedVerdict(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	})
	defer wg.Wait()
	defer l.Close()
	h := &harness{t: t, sink: newSink(t), members: make(chan discovery.Membership)}
	reg := prometheus.NewRegistry()
	c, err := health.NewChecker(health.Options{Default: steady(health.KindTCP), Sink: h.sink, Members: h.members, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	sh := &sharer{}
	c.SetSharer(sh, time.Hour)
	testutil.Run(t, c, 2*time.Second)
	port := l.Addr().(*net.TCPAddr).Port
	h.set(map[string][]discovery.Instance{"web": {{ID: "w1", Address: "127.0.0.1", Port: port}}})
	k := discovery.Key{Upstream: "web", ID: "w1"}
	h.wait(k, health.Healthy, 5*time.Second) // its own first probe

	c.ApplyVerdict(k, false, "no response within 500ms")
	if st := h.wait(k, health.Unhealthy, 2*time.Second); st.Reason != "shared: no response within 500ms" {
		t.Errorf("reason %q, want the owners'", st.Reason)
	}
	c.ApplyVerdict(k, true, "")
	h.wait(k, health.Healthy, 2*time.Second)
	if n := testutil.Metric(t, reg, "vigil_health_state_changes_total", map[string]string{"upstream": "web", "cause": "shared"}); n != 2 {
		t.Errorf("changes by shared verdicts: %v, want 2", n)
	}

	// Own evidence: a connect failure seen by a proxy, then its own probe, refused.
	l.Close()
	c.ReportPassive(k, errTest, 100)
	st := h.wait(k, health.Unhealthy, 2*time.Second)
	c.ApplyVerdict(k, true, "")
	c.ClearVerdict(k)
	c.ApplyVerdict(k, true, "")
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool {
		sh.mu.Lock()
		defer sh.mu.Unlock()
		return len(sh.verdicts) == 2 && sh.verdicts[1] == health.Unhealthy
	}, "the sharer is told the own verdicts: healthy, then unhealthy")
	if st, _ = h.sink.status(k); st.State != health.Unhealthy || strings.HasPrefix(st.Reason, "shared: ") {
		t.Errorf("status %v %q after the owners said healthy, want its own unhealthy verdict", st.State, st.Reason)
	}
}
