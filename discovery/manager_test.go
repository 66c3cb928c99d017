package discovery_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/static"
	"github.com/vigil-sidecar/vigil/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chanDiscoverer sends whatever the test puts on its channel.
type chanDiscoverer chan []discovery.Group

func (c chanDiscoverer) Run(ctx context.Context, up chan<- []discovery.Group) {
	for {
		select {
		case <-ctx.Done():
			return
		case gs := <-c:
			select {
			case up <- gs:
			case <-ctx.Done():
				return
			}
		}
	}
}

func next(t *testing.T, m *discovery.Manager, cond func(discovery.Membership) bool) discovery.Membership {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case mem := <-m.SyncCh():
			if cond(mem) {
				return mem
			}
		case <-timeout:
			t.Fatal("no membership matching the condition")
		}
	}
}

func ids(u *discovery.Upstream) []string {
	if u == nil {
		return nil
	}
	var out []string
	for _, in := range u.Instances {
		out = append(out, in.ID)
	}
	return out
}

func TestMergeAndRemove(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	a, b := make(chanDiscoverer), make(chanDiscoverer)
	m := discovery.NewManager(discovery.ManagerOptions{})
	m.Register("a", a)
	m.Register("b", b)
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	a <- []discovery.Group{{Source: "api", Upstream: "api", Instances: []discovery.Instance{{ID: "2"}, {ID: "1"}}}}
	mem := next(t, m, func(m discovery.Membership) bool { return len(ids(m.Upstreams["api"])) == 2 })
	if mem.Ready {
		t.Error("ready before every discoverer sent its first set")
	}
	if got := ids(mem.Upstreams["api"]); got[0] != "1" || got[1] != "2" {
		t.Errorf("instances not sorted by ID: %v", got)
	}
	synced := time.Now().Add(-time.Minute)
	b <- []discovery.Group{{Source: "api", Upstream: "api", Synced: synced, Instances: []discovery.Instance{{ID: "2"}, {ID: "3"}}}}
	mem = next(t, m, func(m discovery.Membership) bool { return m.Ready })
	if got := ids(mem.Upstreams["api"]); len(got) != 3 {
		t.Errorf("merged instances = %v, want 1 2 3 (no duplicate)", got)
	}
	if !mem.Upstreams["api"].Synced.Equal(synced) {
		t.Errorf("synced = %v, want %v", mem.Upstreams["api"].Synced, synced)
	}
	a <- []discovery.Group{{Source: "api", Upstream: "api"}} // empty: a's instances leave
	mem = next(t, m, func(m discovery.Membership) bool { return len(ids(m.Upstreams["api"])) == 2 })
	if got := ids(mem.Upstreams["api"]); got[0] != "2" || got[1] != "3" {
		t.Errorf("after removal = %v, want 2 3", got)
	}
}

func TestPersistedMembershipStandsIn(t *testing.T) {
	state := filepath.Join(t.TempDir(), "membership.json")
	ctx, cancel := context.WithCancel(context.Background())
	src := make(chanDiscoverer)
	m := discovery.NewManager(discovery.ManagerOptions{StateFile: state})
	m.Register("consul", src)
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	src <- []discovery.Group{{Source: "api/dc1", Upstream: "api", Instances: []discovery.Instance{{ID: "1", Address: "127.0.0.1", Port: 80}}}}
	next(t, m, func(m discovery.Membership) bool { return m.Ready })
	// The manager persists after publishing: wait for the file.
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool {
		b, err := os.ReadFile(state)
		return err == nil && len(b) > 0
	}, "membership persisted")
	cancel()
	<-done

	// Restart with a source that never answers (Consul down): the persisted state serves.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	silent := make(chanDiscoverer)
	m = discovery.NewManager(discovery.ManagerOptions{StateFile: state, MaxStateAge: time.Hour})
	m.Register("consul", silent)
	done = make(chan error)
	go func() { done <- m.Run(ctx) }()
	mem := next(t, m, func(m discovery.Membership) bool { return len(ids(m.Upstreams["api"])) == 1 })
	if mem.Upstreams["api"].Instances[0].Address != "127.0.0.1" {
		t.Errorf("persisted instance lost its address: %+v", mem.Upstreams["api"].Instances[0])
	}
	// The source's first full set replaces the persisted state.
	silent <- []discovery.Group{{Source: "web/dc1", Upstream: "web", Instances: []discovery.Instance{{ID: "9"}}}}
	mem = next(t, m, func(m discovery.Membership) bool { return m.Ready })
	if mem.Upstreams["api"] != nil || len(ids(mem.Upstreams["web"])) != 1 {
		t.Errorf("after the first full set: %v", mem.Names())
	}
	cancel()
	<-done
}

func TestStaleStateIgnored(t *testing.T) {
	state := filepath.Join(t.TempDir(), "membership.json")
	os.WriteFile(state, []byte(`{"saved":"2000-01-01T00:00:00Z","groups":[{"source":"consul/api","upstream":"api","instances":[{"id":"1"}]}]}`), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := discovery.NewManager(discovery.ManagerOptions{StateFile: state, MaxStateAge: time.Hour})
	m.Register("consul", make(chanDiscoverer))
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	mem := next(t, m, func(discovery.Membership) bool { return true })
	if len(mem.Upstreams) != 0 {
		t.Errorf("a state older than max age was used: %v", mem.Names())
	}
	cancel()
	<-done
}

func TestStaticReload(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := static.New([]static.Upstream{{Name: "a", Instances: []static.Instance{{Address: "127.0.0.1", Port: 1}}}})
	m := discovery.NewManager(discovery.ManagerOptions{})
	m.Register("static", s)
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	mem := next(t, m, func(m discovery.Membership) bool { return m.Ready })
	in := mem.Upstreams["a"].Instances[0]
	if in.ID != "127.0.0.1:1" || in.Weight != 1 {
		t.Errorf("static defaults: id %q weight %d, want 127.0.0.1:1 and 1", in.ID, in.Weight)
	}
	s.Set([]static.Upstream{{Name: "b", Instances: []static.Instance{{Address: "127.0.0.1", Port: 2}}}})
	mem = next(t, m, func(m discovery.Membership) bool { return m.Upstreams["b"] != nil })
	if mem.Upstreams["a"] != nil {
		t.Error("removed upstream a still present after reload")
	}
	cancel()
	<-done
}

// TestFirstSetKeepsUnconfirmedSources: a first full set that marks a source Keep (its origin is
// unreachable) keeps that source's persisted group and drops the provider's other stale ones.
func TestFirstSetKeepsUnconfirmedSources(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.json")
	old := time.Now().Add(-time.Minute).UTC()
	seed := discovery.NewManager(discovery.ManagerOptions{StateFile: state})
	c := make(chanDiscoverer)
	seed.Register("consul", c)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- seed.Run(ctx) }()
	c <- []discovery.Group{
		{Source: "api/dc1", Upstream: "api", Instances: []discovery.Instance{{ID: "a1"}}, Synced: old},
		{Source: "api/dc2", Upstream: "api", Instances: []discovery.Instance{{ID: "b1"}}, Synced: old},
		{Source: "gone/dc1", Upstream: "gone", Instances: []discovery.Instance{{ID: "g1"}}, Synced: old},
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool {
		b, _ := os.ReadFile(state)
		return len(b) > 0 && strings.Contains(string(b), "g1")
	}, "state persisted")
	cancel()
	<-done

	m := discovery.NewManager(discovery.ManagerOptions{StateFile: state})
	c = make(chanDiscoverer)
	m.Register("consul", c)
	ctx, cancel = context.WithCancel(context.Background())
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c <- []discovery.Group{
		{Source: "api/dc1", Upstream: "api", Instances: []discovery.Instance{{ID: "a2"}}, Synced: time.Now()},
		{Source: "api/dc2", Upstream: "api", Keep: true},
	}
	mem := next(t, m, func(m discovery.Membership) bool { return m.Ready })
	if got := ids(mem.Upstreams["api"]); len(got) != 2 || got[0] != "a2" || got[1] != "b1" {
		t.Errorf("api = %v, want the new dc1 instance and the kept dc2 one", got)
	}
	if !mem.Upstreams["api"].Synced.Equal(old) {
		t.Errorf("synced = %v, want the kept group's %v", mem.Upstreams["api"].Synced, old)
	}
	if mem.Upstreams["gone"] != nil {
		t.Error("a persisted source the first set does not name was kept")
	}
}

// TestStateAgeIsPerGroup: a group's age is its last sync (or the save time while it was in sync).
func TestStateAgeIsPerGroup(t *testing.T) {
	state := filepath.Join(t.TempDir(), "membership.json")
	now := time.Now().UTC()
	os.WriteFile(state, []byte(`{"saved":"`+now.Format(time.RFC3339)+`","groups":[
		{"source":"consul/api","upstream":"api","instances":[{"id":"1"}]},
		{"source":"consul/db","upstream":"db","synced":"2000-01-01T00:00:00Z","instances":[{"id":"2"}]}]}`), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := discovery.NewManager(discovery.ManagerOptions{StateFile: state, MaxStateAge: time.Hour})
	m.Register("consul", make(chanDiscoverer))
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	mem := next(t, m, func(m discovery.Membership) bool { return len(m.Upstreams) > 0 })
	if mem.Upstreams["db"] != nil {
		t.Error("a group whose last sync is older than max_state_age was used")
	}
	api := mem.Upstreams["api"]
	if api == nil || !api.Synced.Equal(now.Truncate(time.Second)) {
		t.Errorf("in-sync group: %+v, want it used with Synced = the save time %v", api, now)
	}
	cancel()
	<-done
}

// TestOrphanProviderDropped: persisted groups of a provider no longer configured are not served.
func TestOrphanProviderDropped(t *testing.T) {
	state := filepath.Join(t.TempDir(), "m.json")
	now := time.Now().UTC().Format(time.RFC3339Nano)
	os.WriteFile(state, []byte(`{"saved":"`+now+`","groups":[{"source":"consul/web/local","upstream":"web","instances":[{"id":"x","address":"127.0.0.1","port":80}]}]}`), 0o600)
	m := discovery.NewManager(discovery.ManagerOptions{StateFile: state, MaxStateAge: 24 * time.Hour})
	m.Register("static", static.New([]static.Upstream{{Name: "api", Instances: []static.Instance{{Address: "127.0.0.1", Port: 81}}}}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for {
		mem := next(t, m, func(discovery.Membership) bool { return true })
		if mem.Upstreams["web"] != nil {
			t.Fatal("upstream web from an unregistered provider (consul) is served")
		}
		if mem.Ready {
			return
		}
	}
}

// TestStaticRemovalSurvivesReplacedChange: removals are not lost when a change is replaced unsent.
func TestStaticRemovalSurvivesReplacedChange(t *testing.T) {
	in := func(port int) []static.Instance { return []static.Instance{{Address: "127.0.0.1", Port: port}} }
	s := static.New([]static.Upstream{{Name: "x", Instances: in(1)}, {Name: "y", Instances: in(2)}})
	s.Set([]static.Upstream{{Name: "x", Instances: in(1)}})                                // removes y; not sent yet
	s.Set([]static.Upstream{{Name: "x", Instances: in(1)}, {Name: "z", Instances: in(3)}}) // replaces it
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := discovery.NewManager(discovery.ManagerOptions{})
	m.Register("static", s)
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	mem := next(t, m, func(m discovery.Membership) bool { return m.Upstreams["z"] != nil })
	if mem.Upstreams["y"] != nil {
		t.Error("y, removed by a change that was replaced before it was sent, is still there")
	}
	cancel()
	<-done
}

func TestHealthUnmarshalRejectsUnknown(t *testing.T) {
	for _, h := range []discovery.Health{discovery.Passing, discovery.Critical, discovery.Maintenance} {
		b, _ := h.MarshalText()
		var got discovery.Health
		if err := got.UnmarshalText(b); err != nil || got != h {
			t.Errorf("%s: got %s, %v", h, got, err)
		}
	}
	for _, bad := range []string{"", "PASSING", "ok", "critica"} {
		got := discovery.Critical
		if err := got.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("%q: decoded as %s, want an error", bad, got)
		}
	}
}

// A corrupted state file (an unknown health value) is not used: it must not mark instances
// passing. The manager still runs on what its sources send.
func TestCorruptStateNotPassing(t *testing.T) {
	state := filepath.Join(t.TempDir(), "membership.json")
	os.WriteFile(state, []byte(`{"saved":"2999-01-01T00:00:00Z","groups":[{"source":"consul/api","upstream":"api","instances":[{"id":"1","health":"pasing"}]}]}`), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := discovery.NewManager(discovery.ManagerOptions{StateFile: state})
	src := make(chanDiscoverer)
	m.Register("consul", src)
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	mem := next(t, m, func(discovery.Membership) bool { return true })
	if len(mem.Upstreams) != 0 {
		t.Errorf("a corrupted state file was used: %v", mem.Names())
	}
	select {
	case src <- []discovery.Group{{Source: "api", Upstream: "api", Instances: []discovery.Instance{{ID: "2", Address: "127.0.0.1", Port: 1}}}}:
	case <-time.After(5 * time.Second):
		t.Fatal("discoverer not read")
	}
	mem = next(t, m, func(mem discovery.Membership) bool { return mem.Upstreams["api"] != nil })
	if got := ids(mem.Upstreams["api"]); len(got) != 1 || got[0] != "2" {
		t.Errorf("api: %v", got)
	}
	cancel()
	<-done
}
