// Package share shares the active probing of upstream instances among the vigils of a datacenter.
package share

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// Checker is the part of health.Checker that shared probing drives.
type Checker interface {
	SetSharer(s health.Sharer, idle time.Duration)
	ApplyVerdict(k discovery.Key, healthy bool, reason string)
	ClearVerdict(k discovery.Key)
	Reowned()
	OwnVerdicts() []health.OwnVerdict
}

// Options configures a Node.
type Options struct {
	Config     Config
	Name       string                // this vigil's node name, unique in the datacenter
	Datacenter string                // only vigils of the same datacenter share
	Zone       string                // this vigil's zone
	Upstreams  []string              // the upstreams this vigil watches whose probing is shared
	Checker    Checker               // the one health state machine that verdicts feed
	Registerer prometheus.Registerer // may be nil
	Logger     *slog.Logger          // may be nil
}

// Node is one vigil's part in shared probing: a memberlist member that computes which
// instances it owns, broadcasts its verdicts on them and applies the owners' verdicts on the others.
type Node struct {
	o       Options
	cfg     Config
	log     *slog.Logger
	met     *metrics
	q       *memberlist.TransmitLimitedQueue
	started chan struct{}

	ml    atomic.Pointer[memberlist.Memberlist]
	alive atomic.Int64 // live members, read by the broadcast queue under its own lock

	mu      sync.Mutex
	shared  map[string]bool // upstreams whose probing is shared
	members map[string]member
	gen     uint64                    // of members
	own     map[discovery.Key]verdict // this vigil's last verdict on instances it owns
	heard   map[discovery.Key]map[string]heard
	applied map[discovery.Key]applied
	zones   map[discovery.Key]string
	cache   map[discovery.Key]ownerCache
	seq     uint64
	dirty   map[discovery.Key]struct{}

	sig     chan struct{} // dirty keys
	changed chan struct{} // members changed
}

// verdict is what an owner broadcasts about one instance.
type verdict struct {
	Upstream string `json:"u"`
	ID       string `json:"i"`
	Owner    string `json:"o"`
	Seq      uint64 `json:"s"` // grows with each message of one owner, across its restarts
	Healthy  bool   `json:"h"`
	Reason   string `json:"r,omitempty"`
	At       int64  `json:"t"` // unix ns at the owner, for the sharing delay metric only
}

func (v *verdict) key() discovery.Key { return discovery.Key{Upstream: v.Upstream, ID: v.ID} }

// heard is a verdict received from an owner, with when it was received here.
type heard struct {
	verdict
	recv time.Time
}

// applied is what the checker was last told about an instance.
type applied struct {
	has     bool
	healthy bool
	reason  string
}

type ownerCache struct {
	gen    uint64
	zone   string
	owners []string
}

// New returns a Node; Run starts it. It registers itself as the checker's sharer.
func New(o Options) (*Node, error) {
	if err := o.Config.Validate(); err != nil {
		return nil, fmt.Errorf("share: %w", err)
	}
	if o.Name == "" || o.Checker == nil {
		return nil, errors.New("share: options: name and checker are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	n := &Node{
		o: o, cfg: o.Config, log: o.Logger, met: newMetrics(o.Registerer), started: make(chan struct{}),
		shared: map[string]bool{}, members: map[string]member{}, own: map[discovery.Key]verdict{},
		heard: map[discovery.Key]map[string]heard{}, applied: map[discovery.Key]applied{},
		zones: map[discovery.Key]string{}, cache: map[discovery.Key]ownerCache{},
		seq: uint64(time.Now().UnixNano()), dirty: map[discovery.Key]struct{}{},
		sig: make(chan struct{}, 1), changed: make(chan struct{}, 1),
	}
	for _, u := range o.Upstreams {
		n.shared[u] = true
	}
	n.q = &memberlist.TransmitLimitedQueue{NumNodes: n.numMembers, RetransmitMult: 4}
	idle := o.Config.IdleInterval
	if idle == 0 {
		idle = time.Hour // never on a timer, in practice
	}
	o.Checker.SetSharer(n, idle)
	return n, nil
}

// Started is closed once the gossip listens; Addr is valid from then.
func (n *Node) Started() <-chan struct{} { return n.started }

// Addr returns the gossip's host:port.
func (n *Node) Addr() string {
	ml := n.ml.Load()
	if ml == nil {
		return ""
	}
	ln := ml.LocalNode()
	return net.JoinHostPort(ln.Addr.String(), strconv.Itoa(int(ln.Port)))
}

// Run gossips until ctx ends, then leaves without notice (a crash looks the same to the others).
func (n *Node) Run(ctx context.Context) error {
	c := memberlist.DefaultLANConfig()
	c.Name = n.o.Name
	c.BindAddr, c.BindPort = n.cfg.Bind, n.cfg.Port
	if n.cfg.Advertise != "" {
		c.AdvertiseAddr = n.cfg.Advertise
	}
	c.ProbeInterval, c.GossipInterval = n.cfg.ProbeInterval, n.cfg.GossipInterval
	c.ProbeTimeout = min(c.ProbeTimeout, n.cfg.ProbeInterval/2)
	c.PushPullInterval = max(n.cfg.MaxVerdictAge*4, 5*time.Second)
	c.Delegate, c.Events = n, n
	c.Logger = log.New(io.Discard, "", 0)
	if n.log.Enabled(ctx, slog.LevelDebug) {
		c.Logger = slog.NewLogLogger(n.log.Handler(), slog.LevelDebug)
	}
	ml, err := memberlist.Create(c)
	if err != nil {
		return fmt.Errorf("share: gossip on %s: %w", net.JoinHostPort(n.cfg.Bind, strconv.Itoa(n.cfg.Port)), err)
	}
	n.ml.Store(ml)
	close(n.started)
	defer func() { _ = ml.Shutdown() }()
	n.log.Info("share: gossip started", "addr", n.Addr(), "owners", n.cfg.Owners)
	n.join(ml)

	tick := time.NewTicker(n.cfg.MaxVerdictAge / 3)
	defer tick.Stop()
	rejoin := time.NewTicker(10 * time.Second)
	defer rejoin.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-n.changed:
			n.o.Checker.Reowned()
			n.evaluate(true)
		case <-n.sig:
			n.evaluate(false)
		case <-tick.C:
			n.refresh()
			n.evaluate(true)
		case <-rejoin.C:
			if ml.NumMembers() <= 1 {
				n.join(ml)
			}
		}
	}
}

func (n *Node) join(ml *memberlist.Memberlist) {
	if len(n.cfg.Join) == 0 {
		return
	}
	if k, err := ml.Join(n.cfg.Join); err != nil {
		n.log.Warn("share: join", "addrs", n.cfg.Join, "joined", k, "err", err)
	}
}

// numMembers is the number of live members, for the broadcasts' retransmit count.
func (n *Node) numMembers() int { return max(int(n.alive.Load()), 1) }

// Owners returns the owners of instance k, in zone, as this vigil sees them.
func (n *Node) Owners(k discovery.Key, zone string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.ownersLocked(k, zone))
}

func (n *Node) ownersLocked(k discovery.Key, zone string) []string {
	if c, ok := n.cache[k]; ok && c.gen == n.gen && c.zone == zone {
		return c.owners
	}
	ms := make([]member, 0, len(n.members))
	for _, m := range n.members {
		ms = append(ms, m)
	}
	os := owners(ms, k, zone, n.cfg.Owners)
	n.cache[k] = ownerCache{gen: n.gen, zone: zone, owners: os}
	return os
}

func (n *Node) isOwnerLocked(k discovery.Key, zone string) bool {
	return !n.shared[k.Upstream] || slices.Contains(n.ownersLocked(k, zone), n.o.Name)
}

// Owns reports whether this vigil probes k at the full rate: it owns k, k's upstream is not
// shared, or no owner's verdict on k is fresh (health.Sharer).
func (n *Node) Owns(k discovery.Key, zone string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.zones[k] = zone
	if n.isOwnerLocked(k, zone) {
		return true
	}
	_, ok := n.freshLocked(k, time.Now())
	return !ok
}

// Taken reports whether this vigil takes the owners' verdict on k now, instead of probing it.
func (n *Node) Taken(k discovery.Key) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.applied[k].has
}

// Verdict broadcasts a change of this vigil's own verdict on an instance it owns (health.Sharer).
func (n *Node) Verdict(k discovery.Key, zone string, s health.State, reason string) {
	if s == health.Unknown {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.zones[k] = zone
	if !n.isOwnerLocked(k, zone) || !n.shared[k.Upstream] {
		return
	}
	n.sendLocked(k, s == health.Healthy, reason)
}

// sendLocked queues a verdict for broadcast. Called with mu held.
func (n *Node) sendLocked(k discovery.Key, healthy bool, reason string) {
	n.seq++
	v := verdict{Upstream: k.Upstream, ID: k.ID, Owner: n.o.Name, Seq: n.seq, Healthy: healthy, Reason: reason, At: time.Now().UnixNano()}
	n.own[k] = v
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	n.q.QueueBroadcast(&broadcast{key: k, msg: b})
	n.met.sent.Inc()
}

// refresh broadcasts again this vigil's verdict on every instance it owns, so that the
// others' copies stay younger than max_verdict_age, and forgets those it no longer owns.
func (n *Node) refresh() {
	vs := n.o.Checker.OwnVerdicts()
	n.mu.Lock()
	defer n.mu.Unlock()
	seen := make(map[discovery.Key]bool, len(vs))
	for _, v := range vs {
		seen[v.Key] = true
		n.zones[v.Key] = v.Zone
		if v.State == health.Unknown || !n.shared[v.Key.Upstream] || !n.isOwnerLocked(v.Key, v.Zone) {
			delete(n.own, v.Key)
			continue
		}
		n.sendLocked(v.Key, v.State == health.Healthy, v.Reason)
	}
	for k := range n.zones {
		if !seen[k] {
			delete(n.zones, k)
			delete(n.own, k)
			delete(n.heard, k)
			delete(n.applied, k)
			delete(n.cache, k)
		}
	}
}

// freshLocked returns the verdict of k's owners that were heard within max_verdict_age:
// unhealthy if any says so. Called with mu held.
func (n *Node) freshLocked(k discovery.Key, now time.Time) (applied, bool) {
	os := n.ownersLocked(k, n.zones[k])
	out, ok := applied{has: true, healthy: true}, false
	for name, h := range n.heard[k] {
		if name == n.o.Name || !slices.Contains(os, name) || now.Sub(h.recv) > n.cfg.MaxVerdictAge {
			continue
		}
		ok = true
		if !h.Healthy && (out.healthy || h.Reason < out.reason) {
			out.healthy, out.reason = false, h.Reason
		}
	}
	return out, ok
}

// evaluate tells the checker the owners' verdict on the dirty instances (or all of them).
func (n *Node) evaluate(all bool) {
	type change struct {
		k discovery.Key
		a applied
	}
	var changes []change
	now := time.Now()
	n.mu.Lock()
	keys := n.dirty
	n.dirty = map[discovery.Key]struct{}{}
	if all {
		for k := range n.heard {
			keys[k] = struct{}{}
		}
		for k := range n.applied {
			keys[k] = struct{}{}
		}
	}
	for k := range keys {
		var want applied
		if !n.isOwnerLocked(k, n.zones[k]) {
			want, _ = n.freshLocked(k, now)
		}
		if want != n.applied[k] {
			if want.has {
				n.applied[k] = want
			} else {
				delete(n.applied, k)
			}
			changes = append(changes, change{k, want})
		}
	}
	n.mu.Unlock()
	for _, c := range changes {
		if c.a.has {
			n.o.Checker.ApplyVerdict(c.k, c.a.healthy, c.a.reason)
			n.met.applied.Inc()
		} else {
			n.o.Checker.ClearVerdict(c.k)
		}
	}
}

// receive records a verdict from another vigil.
func (n *Node) receive(v verdict) {
	if v.Owner == n.o.Name || v.Upstream == "" {
		return
	}
	now := time.Now()
	k := v.key()
	n.mu.Lock()
	if !n.shared[k.Upstream] { // an upstream this vigil does not watch, or probes itself
		n.mu.Unlock()
		return
	}
	m := n.heard[k]
	if m == nil {
		m = map[string]heard{}
		n.heard[k] = m
	}
	if old, ok := m[v.Owner]; ok && old.Seq >= v.Seq {
		n.mu.Unlock()
		return
	}
	m[v.Owner] = heard{v, now}
	n.dirty[k] = struct{}{}
	n.mu.Unlock()
	n.met.received.Inc()
	if v.At > 0 {
		n.met.delay.Observe(max(now.Sub(time.Unix(0, v.At)).Seconds(), 0))
	}
	select {
	case n.sig <- struct{}{}:
	default:
	}
}
