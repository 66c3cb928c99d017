package share_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/share"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend is a real HTTP instance that counts the probes of each vigil (by its X-Vigil header).
type backend struct {
	addr    string
	srv     *http.Server
	release chan struct{}
	mu      sync.Mutex
	hung    bool
	count   map[string]int
}

func newBackend(t *testing.T) *backend {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: l.Addr().String(), release: make(chan struct{}), count: map[string]int{}}
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.count[r.Header.Get("X-Vigil")]++
		hung := b.hung
		b.mu.Unlock()
		if hung { // accepts and never answers
			select {
			case <-b.release:
			case <-r.Context().Done():
			}
		}
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = b.srv.Serve(l) }()
	t.Cleanup(func() {
		close(b.release)
		_ = b.srv.Close()
		<-done
	})
	return b
}

func (b *backend) counts() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]int, len(b.count))
	for k, v := range b.count {
		out[k] = v
	}
	return out
}

func (b *backend) hang() { b.mu.Lock(); b.hung = true; b.mu.Unlock() }

// crash closes the listener and every connection at once.
func (b *backend) crash() { _ = b.srv.Close() }

// sink keeps the last status of every instance.
type sink struct {
	mu   sync.Mutex
	st   map[discovery.Key]health.Status
	hist map[discovery.Key][]string
}

func (s *sink) SetMembership(_ discovery.Membership, st map[discovery.Key]health.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = st
}

func (s *sink) SetStatus(k discovery.Key, st health.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st[k] = st
	if s.hist == nil {
		s.hist = map[discovery.Key][]string{}
	}
	s.hist[k] = append(s.hist[k], fmt.Sprintf("%s %s %q", time.Now().Format("05.000"), st.State, st.Reason))
}

func (s *sink) history(k discovery.Key) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.hist[k])
}

func (s *sink) get(k discovery.Key) health.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st[k]
}

// vigil is one in-process vigil: a checker and its share node.
type vigil struct {
	name   string
	sink   *sink
	reg    *prometheus.Registry
	node   *share.Node
	cancel context.CancelFunc
	done   chan struct{}
}

func (v *vigil) stop(t *testing.T) {
	v.cancel()
	select {
	case <-v.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not stop", v.name)
	}
}

var shared = []string{"a", "b", "c"} // "d" is not shared

func startVigil(t *testing.T, name string, m discovery.Membership, join []string) *vigil {
	chk := health.DefaultCheck()
	chk.Kind = health.KindHTTP
	chk.Interval, chk.UnhealthyInterval, chk.EdgeInterval, chk.Timeout = 500*time.Millisecond, 500*time.Millisecond, 50*time.Millisecond, 300*time.Millisecond
	chk.HTTP.Headers = map[string]string{"X-Vigil": name}
	members := make(chan discovery.Membership, 1)
	members <- m
	v := &vigil{name: name, sink: &sink{st: map[discovery.Key]health.Status{}}, reg: prometheus.NewRegistry(), done: make(chan struct{})}
	c, err := health.NewChecker(health.Options{Default: chk, Sink: v.sink, Members: members, Registerer: v.reg})
	if err != nil {
		t.Fatal(err)
	}
	cfg := share.DefaultConfig()
	cfg.Enabled, cfg.Bind, cfg.Port, cfg.Join = true, "127.0.0.1", 0, join
	cfg.MaxVerdictAge, cfg.ProbeInterval, cfg.GossipInterval = 5*time.Second, time.Second, 200*time.Millisecond
	v.node, err = share.New(share.Options{Config: cfg, Name: name, Datacenter: "dc1", Upstreams: shared, Checker: c, Registerer: v.reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	var wg sync.WaitGroup
	wg.Go(func() { _ = c.Run(ctx) })
	wg.Go(func() {
		if err := v.node.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	go func() { wg.Wait(); close(v.done) }()
	select {
	case <-v.node.Started():
	case <-time.After(10 * time.Second):
		t.Fatal("gossip not started")
	}
	return v
}

// TestSharedProbing runs three vigils and four instances (three shared, one not) through the
// cases of shared probing, in order.
func TestSharedProbing(t *testing.T) {
	m := discovery.Membership{Upstreams: map[string]*discovery.Upstream{}, Ready: true}
	backends := map[string]*backend{}
	for _, u := range []string{"a", "b", "c", "d"} {
		b := newBackend(t)
		backends[u] = b
		host, port, _ := net.SplitHostPort(b.addr)
		var p int
		fmt.Sscan(port, &p)
		m.Upstreams[u] = &discovery.Upstream{Name: u, Instances: []discovery.Instance{{ID: u + "1", Address: host, Port: p}}}
	}
	key := func(u string) discovery.Key { return discovery.Key{Upstream: u, ID: u + "1"} }
	vs := []*vigil{startVigil(t, "v0", m, nil)}
	vs = append(vs, startVigil(t, "v1", m, []string{vs[0].node.Addr()}), startVigil(t, "v2", m, []string{vs[0].node.Addr()}))
	alive := map[string]bool{"v0": true, "v1": true, "v2": true}
	defer func() {
		for _, v := range vs {
			if alive[v.name] {
				v.stop(t)
			}
		}
	}()
	byName := map[string]*vigil{}
	for _, v := range vs {
		byName[v.name] = v
	}
	owners := func(u string) []string { return vs[0].node.Owners(key(u), "") }

	// Converged: every vigil sees the same owners (2 of 3) and the non-owners take their verdict.
	waitFor(t, 20*time.Second, func() bool {
		for _, u := range shared {
			os := owners(u)
			if len(os) != 2 {
				return false
			}
			for _, v := range vs {
				if !slices.Equal(v.node.Owners(key(u), ""), os) || v.sink.get(key(u)).State != health.Healthy {
					return false
				}
				if !slices.Contains(os, v.name) && !v.node.Taken(key(u)) {
					return false
				}
			}
		}
		return true
	}, "vigils agree on owners and non-owners take their verdicts")
	t.Log(fmt.Sprint(func() []string {
		var out []string
		for _, u := range shared {
			for _, v := range vs {
				out = append(out, fmt.Sprintf("%s@%s owners=%v state=%v taken=%v", u, v.name, v.node.Owners(key(u), ""), v.sink.get(key(u)).State, v.node.Taken(key(u))))
			}
		}
		return out
	}()))
	for _, u := range shared {
		t.Logf("owners of %s: %v", u, owners(u))
	}

	// Each shared instance is probed by its 2 owners only; the unshared one by all 3. A vigil
	// whose own first probes failed (a loaded machine) confirms its recovery with one more
	// probe: let the owners probe three times first.
	mark := map[string]map[string]int{}
	for u, b := range backends {
		mark[u] = b.counts()
	}
	since := func(u, v string) int { return backends[u].counts()[v] - mark[u][v] }
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() bool {
		for _, u := range shared {
			for _, o := range owners(u) {
				if since(u, o) < 3 {
					return false
				}
			}
		}
		return true
	}, "owners probe")
	for u, b := range backends {
		mark[u] = b.counts()
	}
	start := time.Now()
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() bool {
		for _, u := range shared {
			for _, o := range owners(u) {
				if since(u, o) < 6 {
					return false
				}
			}
		}
		for _, v := range vs {
			if since("d", v.name) < 6 {
				return false
			}
		}
		return true
	}, "owners keep probing")
	elapsed := time.Since(start).Seconds()
	for _, u := range []string{"a", "b", "c", "d"} {
		total := 0
		for _, v := range vs {
			n := since(u, v.name)
			total += n
			if u != "d" && !slices.Contains(owners(u), v.name) && n != 0 {
				t.Errorf("instance %s got %d probes from non-owner %s", u, n, v.name)
			}
		}
		t.Logf("instance %s: %d probes in %.2fs from 3 vigils (%.1f/s; check interval 500ms)", u, total, elapsed, float64(total)/elapsed)
	}

	// A hung instance (accepts, never answers) is dropped by all three through the owners' verdicts.
	backends["a"].hang()
	testutil.Eventually(t, 20*time.Second, 5*time.Millisecond, func() bool {
		for _, v := range vs {
			if v.sink.get(key("a")).State != health.Unhealthy {
				return false
			}
		}
		return true
	}, "every vigil drops the hung instance")
	var ownerAt time.Time
	for _, v := range vs {
		if st := v.sink.get(key("a")); slices.Contains(owners("a"), v.name) && (ownerAt.IsZero() || st.Since.Before(ownerAt)) {
			ownerAt = st.Since
		}
	}
	for _, v := range vs {
		st := v.sink.get(key("a"))
		if slices.Contains(owners("a"), v.name) {
			continue
		}
		if !strings.HasPrefix(st.Reason, "shared: ") {
			t.Errorf("non-owner %s: reason %q, want the owners' verdict", v.name, st.Reason)
		}
		t.Logf("hung instance: non-owner %s dropped it %s after the first owner (sharing delay)", v.name, st.Since.Sub(ownerAt))
	}

	// A crashed instance is dropped by a non-owner through its own watch connection.
	changes := func(v *vigil, cause string) float64 {
		return testutil.Metric(t, v.reg, "vigil_health_state_changes_total", map[string]string{"upstream": "c", "cause": cause})
	}
	before := map[string][2]float64{}
	for _, v := range vs {
		before[v.name] = [2]float64{changes(v, "watch"), changes(v, "shared")}
	}
	backends["c"].crash()
	testutil.Eventually(t, 20*time.Second, 5*time.Millisecond, func() bool {
		for _, v := range vs {
			if v.sink.get(key("c")).State != health.Unhealthy {
				return false
			}
		}
		return true
	}, "every vigil drops the crashed instance")
	for _, v := range vs {
		if slices.Contains(owners("c"), v.name) {
			continue
		}
		st := v.sink.get(key("c"))
		watch, sh := changes(v, "watch")-before[v.name][0], changes(v, "shared")-before[v.name][1]
		if watch != 1 || sh != 0 || strings.HasPrefix(st.Reason, "shared: ") {
			t.Errorf("non-owner %s: changes by watch %v, by shared %v, reason %q; want its own watch; %q", v.name, watch, sh, st.Reason, v.sink.history(key("c")))
		}
	}

	// An owner of b dies: ownership moves and b is still probed by 2 live vigils.
	dead := owners("b")[0]
	killed := time.Now()
	byName[dead].stop(t)
	alive[dead] = false
	var live []*vigil
	for _, v := range vs {
		if alive[v.name] {
			live = append(live, v)
		}
	}
	testutil.Eventually(t, 30*time.Second, 10*time.Millisecond, func() bool {
		for _, v := range live {
			if os := v.node.Owners(key("b"), ""); len(os) != 2 || slices.Contains(os, dead) {
				return false
			}
		}
		return true
	}, "ownership of b moves off the dead vigil")
	t.Logf("owner %s killed: ownership moved %s later (memberlist probe_interval 1s)", dead, time.Since(killed).Round(time.Millisecond))
	mark["b"] = backends["b"].counts()
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() bool {
		for _, v := range live {
			if since("b", v.name) < 5 {
				return false
			}
		}
		return true
	}, "both live vigils probe b")
	if n := since("b", dead); n != 0 {
		t.Errorf("dead vigil %s probed b %d times", dead, n)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, msg)
		}
		select {
		case <-time.After(10 * time.Millisecond):
		}
	}
}
