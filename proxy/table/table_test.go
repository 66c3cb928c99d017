package table_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// inst describes one instance of the upstream "u" for a policy case: "id zone dc state",
// state being h(ealthy), u(nhealthy), ?(unknown), d(raining) or c(ritical in discovery), or
// n: only its node critical in discovery, probed healthy; m: the same, healthy without a probe
// (check kind none).
type inst string

func setup(t *testing.T, zone string, p table.Policy, insts ...inst) *table.Upstream {
	t.Helper()
	tb := table.New(table.Config{Zone: zone, Default: p})
	up := &discovery.Upstream{Name: "u"}
	st := map[discovery.Key]health.Status{}
	for _, s := range insts {
		f := strings.Fields(string(s))
		in := discovery.Instance{ID: f[0], Address: "127.0.0.1", Port: 1, Zone: f[1], Weight: 1}
		fmt.Sscan(f[2], &in.Failover)
		k := discovery.Key{Upstream: "u", ID: f[0]}
		switch f[3] {
		case "h":
			st[k] = health.Status{State: health.Healthy}
		case "u":
			st[k] = health.Status{State: health.Unhealthy, Reason: "boom"}
		case "d":
			in.Health = discovery.Maintenance
			st[k] = health.Status{State: health.Healthy}
		case "c":
			in.Health = discovery.Critical
			st[k] = health.Status{State: health.Healthy}
		case "n", "m":
			in.Health = discovery.NodeCritical
			st[k] = health.Status{State: health.Healthy, Stats: &health.Stats{}}
			if f[3] == "n" {
				st[k].Stats.Record(time.Now(), time.Millisecond, nil)
			}
		}
		up.Instances = append(up.Instances, in)
	}
	slices.SortFunc(up.Instances, func(a, b discovery.Instance) int { return strings.Compare(a.ID, b.ID) })
	tb.SetMembership(discovery.Membership{Upstreams: map[string]*discovery.Upstream{"u": up}, Ready: true}, st)
	return tb.Snapshot().Lookup("u")
}

// served renders the served instances as "id:priority" in serving order.
func served(u *table.Upstream) string {
	var out []string
	for _, in := range u.Served {
		out = append(out, fmt.Sprintf("%s:%d", in.ID, in.Priority))
	}
	return strings.Join(out, " ")
}

func TestPolicy(t *testing.T) {
	open50 := table.Policy{PanicThreshold: 50, PanicMode: table.FailOpen, ZoneMinHealthy: 70}
	closed50 := open50
	closed50.PanicMode = table.FailClosed
	zonePref := table.Policy{PanicMode: table.FailOpen, ZonePreference: true, ZoneMinHealthy: 50}
	none := table.DefaultPolicy()
	tests := []struct {
		name      string
		zone      string
		policy    table.Policy
		insts     []inst
		want      string
		wantPanic bool
		failover  int
	}{
		{"only healthy served", "", none, []inst{"a - 0 h", "b - 0 u", "c - 0 h"}, "a:0 c:0", false, 0},
		{"unknown never served", "", none, []inst{"a - 0 ?", "b - 0 h"}, "b:0", false, 0},
		{"draining and critical not served", "", none, []inst{"a - 0 d", "b - 0 c", "c - 0 h"}, "c:0", false, 0},
		{"no healthy, no panic threshold: nothing", "", none, []inst{"a - 0 u", "b - 0 u"}, "", false, 0},
		{"at threshold: no panic", "", open50, []inst{"a - 0 h", "b - 0 u"}, "a:0", false, 0},
		{"below threshold fail open: all", "", open50, []inst{"a - 0 h", "b - 0 u", "c - 0 u"}, "a:0 b:0 c:0", true, 0},
		{"fail open keeps draining out", "", open50, []inst{"a - 0 u", "b - 0 u", "c - 0 d"}, "a:0 b:0", true, 0},
		{"below threshold fail closed: healthy only", "", closed50, []inst{"a - 0 h", "b - 0 u", "c - 0 u"}, "a:0", true, 0},
		{"fail closed, none healthy: nothing", "", closed50, []inst{"a - 0 u", "b - 0 u"}, "", true, 0},
		{"unknown does not count toward panic", "", open50, []inst{"a - 0 h", "b - 0 ?", "c - 0 ?"}, "a:0", false, 0},
		{"zone preference: same zone first", "z1", zonePref, []inst{"a z1 0 h", "b z2 0 h", "c z1 0 h", "d z2 0 h"}, "a:0 c:0 b:1 d:1", false, 0},
		{"zone preference: spill over below min healthy", "z1", zonePref, []inst{"a z1 0 h", "b z1 0 u", "c z1 0 u", "d z2 0 h"}, "a:0 d:0", false, 0},
		{"zone preference: at min healthy no spill", "z1", zonePref, []inst{"a z1 0 h", "b z1 0 u", "d z2 0 h"}, "a:0 d:1", false, 0},
		{"zone preference: no local instance", "z9", zonePref, []inst{"a z1 0 h", "b z2 0 h"}, "a:0 b:0", false, 0},
		{"zone preference off: one priority", "z1", none, []inst{"a z1 0 h", "b z2 0 h"}, "a:0 b:0", false, 0},
		{"failover: local dc first", "", none, []inst{"a - 0 h", "b - 1 h"}, "a:0", false, 0},
		{"failover: next dc when local has none healthy", "", none, []inst{"a - 0 u", "b - 1 h", "c - 2 h"}, "b:0", false, 1},
		{"failover: skips a dc with none healthy", "", none, []inst{"a - 0 u", "b - 1 u", "c - 2 h"}, "c:0", false, 2},
		{"failover: back to local", "", none, []inst{"a - 0 h", "b - 1 h"}, "a:0", false, 0},
		{"failover: nothing healthy anywhere, panic in local dc", "", open50, []inst{"a - 0 u", "b - 1 u"}, "a:0", true, 0},
		{"failover with zones: priorities contiguous", "z1", zonePref, []inst{"a z1 0 u", "b z1 1 h", "c z2 1 h"}, "b:0 c:1", false, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := setup(t, tc.zone, tc.policy, tc.insts...)
			if got := served(u); got != tc.want {
				t.Errorf("served = %q, want %q", got, tc.want)
			}
			if u.Panic != tc.wantPanic {
				t.Errorf("panic = %v, want %v", u.Panic, tc.wantPanic)
			}
			if u.Failover != tc.failover {
				t.Errorf("failover = %d, want %d", u.Failover, tc.failover)
			}
			for _, in := range u.Instances {
				if in.Served != slices.ContainsFunc(u.Served, func(p *table.Instance) bool { return p.ID == in.ID }) {
					t.Errorf("instance %s: Served flag disagrees with the Served list", in.ID)
				}
			}
		})
	}
}

func TestStatesAndReasons(t *testing.T) {
	u := setup(t, "", table.DefaultPolicy(), "a - 0 h", "b - 0 u", "c - 0 d", "d - 0 c", "e - 0 ?", "f - 0 n", "g - 0 m")
	// f: Consul cannot reach f's node agent, but vigil's own probe reaches f: vigil's evidence wins.
	want := map[string]string{"a": "healthy/", "b": "unhealthy/boom", "c": "draining/draining in discovery source",
		"d": "unhealthy/critical in discovery source", "e": "unknown/", "f": "healthy/",
		"g": "unhealthy/critical in discovery source"}
	for _, in := range u.Instances {
		if got := in.State.String() + "/" + in.Reason; got != want[in.ID] {
			t.Errorf("%s: %q, want %q", in.ID, got, want[in.ID])
		}
	}
}

func TestVersionsAndSharing(t *testing.T) {
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	ch, cancel := tb.Subscribe()
	defer cancel()
	mem := discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"a": {Name: "a", Instances: []discovery.Instance{{ID: "1", Address: "127.0.0.1", Port: 1}}},
		"b": {Name: "b", Instances: []discovery.Instance{{ID: "1", Address: "127.0.0.1", Port: 2}}},
	}}
	s0 := tb.Snapshot()
	tb.SetMembership(mem, nil)
	s1 := tb.Snapshot()
	if s1.Version <= s0.Version {
		t.Fatalf("version did not grow: %d -> %d", s0.Version, s1.Version)
	}
	if s1.Ready {
		t.Error("ready before any probe")
	}
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("no change signal")
	}
	tb.SetStatus(discovery.Key{Upstream: "a", ID: "1"}, health.Status{State: health.Healthy})
	s2 := tb.Snapshot()
	if s2.Upstreams["b"] != s1.Upstreams["b"] {
		t.Error("unchanged upstream b was rebuilt")
	}
	if s2.Upstreams["a"].Version != s2.Version {
		t.Errorf("upstream a version %d, want %d", s2.Upstreams["a"].Version, s2.Version)
	}
	if s1.Upstreams["a"].Instances[0].State != table.Unknown {
		t.Error("an older snapshot changed")
	}
	tb.SetStatus(discovery.Key{Upstream: "b", ID: "1"}, health.Status{State: health.Unhealthy})
	if !tb.Snapshot().Ready {
		t.Error("not ready after every instance has a verdict")
	}
	// The same membership again: upstream versions stay.
	vb := tb.Snapshot().Upstreams["b"].Version
	tb.SetMembership(mem, map[discovery.Key]health.Status{
		{Upstream: "a", ID: "1"}: {State: health.Healthy}, {Upstream: "b", ID: "1"}: {State: health.Unhealthy}})
	if got := tb.Snapshot().Upstreams["b"].Version; got != vb {
		t.Errorf("unchanged upstream b version moved %d -> %d", vb, got)
	}
	// A status for an unknown upstream is ignored.
	v := tb.Snapshot().Version
	tb.SetStatus(discovery.Key{Upstream: "zzz", ID: "1"}, health.Status{State: health.Healthy})
	if tb.Snapshot().Version != v {
		t.Error("status of an unknown upstream published a snapshot")
	}
}

func TestConcurrentReaders(t *testing.T) {
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	mem := discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"a": {Name: "a", Instances: []discovery.Instance{{ID: "1"}, {ID: "2"}}}}}
	tb.SetMembership(mem, nil)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			var last uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := tb.Snapshot()
				if s.Version < last {
					t.Error("version went backwards")
					return
				}
				last = s.Version
				_ = len(s.Lookup("a").Served)
			}
		})
	}
	for i := range 2000 {
		st := health.Healthy
		if i%2 == 0 {
			st = health.Unhealthy
		}
		tb.SetStatus(discovery.Key{Upstream: "a", ID: "1"}, health.Status{State: st})
	}
	close(stop)
	wg.Wait()
}

// TestVersionStaysWhenNothingVisibleChanges: a probe verdict on an instance that discovery
// already overrides (critical, maintenance) changes nothing a frontend shows: no new version.
func TestVersionStaysWhenNothingVisibleChanges(t *testing.T) {
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	mem := discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"a": {Name: "a", Instances: []discovery.Instance{{ID: "1", Health: discovery.Critical}, {ID: "2"}}}}}
	k := discovery.Key{Upstream: "a", ID: "1"}
	tb.SetMembership(mem, map[discovery.Key]health.Status{k: {State: health.Healthy, Since: time.Now()}})
	v := tb.Snapshot().Lookup("a").Version
	tb.SetStatus(k, health.Status{State: health.Unhealthy, Reason: "probe failed", Since: time.Now()})
	if got := tb.Snapshot().Lookup("a").Version; got != v {
		t.Errorf("upstream version moved %d -> %d for a change no frontend can see", v, got)
	}
	tb.SetStatus(discovery.Key{Upstream: "a", ID: "2"}, health.Status{State: health.Healthy, Since: time.Now()})
	if got := tb.Snapshot().Lookup("a").Version; got == v {
		t.Error("a visible change kept the old version")
	}
}
