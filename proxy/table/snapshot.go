package table

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// State is an instance's state as every frontend sees it.
type State uint8

const (
	Unknown   State = iota // not probed yet: not served
	Healthy                // passing
	Unhealthy              // failing its probes, or critical in its discovery source
	Draining               // leaving: not served to new traffic
)

func (s State) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	case Draining:
		return "draining"
	default:
		return "unknown"
	}
}

// MarshalText encodes s as its name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// States lists every state, in order.
var States = []State{Unknown, Healthy, Unhealthy, Draining}

// Snapshot is one immutable version of everything vigil knows. Never modify one.
type Snapshot struct {
	Version uint64
	// Ready is true once discovery has synced and every instance has had its first probe.
	Ready     bool
	Upstreams map[string]*Upstream
	Names     []string // upstream names, sorted
	// Change is the newest change of an instance's health state that this snapshot (or an
	// earlier one) took in: frontends observe how long it took to reach their clients.
	Change Change
}

// Change identifies a change of an instance's health state: Seq counts them (0: none yet), At is
// the time of the probe result that made it (health.Status.Since).
type Change struct {
	Seq uint64
	At  time.Time
}

// LocalPrefix starts the reserved upstream name of the local service (the `service:` section):
// "local:web". The table holds its status, for the Consul registration, /metrics and
// /v1/upstreams, but no frontend serves it: it is vigil's own service, not a destination.
// No configured upstream can take such a name (a ':' is not allowed in upstream names).
const LocalPrefix = "local:"

// LocalUpstream returns the reserved upstream name of the local service named service.
func LocalUpstream(service string) string { return LocalPrefix + service }

// Upstream is one upstream in a snapshot. Unchanged upstreams are shared between snapshots.
type Upstream struct {
	Name string
	// Local is true for the local service's reserved upstream (see LocalPrefix): DNS and xDS
	// skip it, the admin API shows it marked.
	Local bool
	// Version is the snapshot version in which this upstream last changed.
	Version uint64
	Policy  Policy
	// Instances are all known instances, sorted by ID.
	Instances []Instance
	// Served are the instances traffic may go to, best priority first, then by ID.
	Served []*Instance
	// Healthy and Total count the instances of the tier in use (the local datacenter,
	// or the first fallback datacenter with a healthy instance), draining ones excluded.
	Healthy, Total int
	// Panic is true when the healthy share is below the panic threshold.
	Panic bool
	// Failover is the fallback level in use: 0 for the local datacenter.
	Failover int
	// Synced is when discovery last confirmed this upstream with its origin; zero for static.
	Synced time.Time
	// DCs are the per-datacenter views (for NAME.service.DC.consul), by each datacenter
	// named by an instance. A datacenter with nothing served is still present: it is known.
	DCs map[string]*DC
}

// DC is one datacenter's view of an upstream: its instances judged on their own, with the
// upstream's policy (panic per datacenter), as when that datacenter is asked for by name.
type DC struct {
	// Served are the datacenter's served instances, best priority first, then by ID.
	Served []*Instance
	// Healthy and Total count the datacenter's instances, draining and not probed ones excluded.
	Healthy, Total int
	// Panic is true when the datacenter's healthy share is below the panic threshold.
	Panic bool
}

// Instance is one instance with its state and the policy's verdict.
type Instance struct {
	discovery.Instance
	State    State
	Reason   string
	Since    time.Time
	Flapping bool
	// Served is true when traffic may go to the instance.
	Served bool
	// Priority ranks instances for traffic: 0 first, contiguous. Same zone before other
	// zones (with zone preference), the local datacenter before fallback datacenters.
	Priority int
	// Stats are the live probe statistics (nil when not probed).
	Stats *health.Stats
}

// Lookup returns the named upstream, or nil.
func (s *Snapshot) Lookup(name string) *Upstream {
	if s == nil {
		return nil
	}
	return s.Upstreams[name]
}

// Instances returns the instances of the named upstream as discovery knows them, and whether
// the upstream is in the snapshot.
func (s *Snapshot) Instances(upstream string) ([]discovery.Instance, bool) {
	u := s.Lookup(upstream)
	if u == nil {
		return nil, false
	}
	ins := make([]discovery.Instance, len(u.Instances))
	for i := range u.Instances {
		ins[i] = u.Instances[i].Instance
	}
	return ins, true
}

// probed reports whether vigil's own probes have judged the instance (a check of kind none
// makes it healthy without a probe).
func probed(st health.Status, ok bool) bool {
	return ok && st.State != health.Unknown && st.Stats.Load().Probes > 0
}

// build computes one upstream from its membership, the checker's statuses, the operator's
// maintenance holds and the policy.
// It is a pure function: every frontend's policy comes from here.
func build(mem *discovery.Upstream, statuses map[discovery.Key]health.Status, holds map[string]Hold, p Policy, zone string, version uint64) *Upstream {
	u := &Upstream{Name: mem.Name, Local: strings.HasPrefix(mem.Name, LocalPrefix), Version: version, Policy: p, Synced: mem.Synced}
	u.Instances = make([]Instance, len(mem.Instances))
	for i, di := range mem.Instances {
		in := Instance{Instance: di}
		st, ok := statuses[discovery.Key{Upstream: mem.Name, ID: di.ID}]
		if ok {
			in.Reason, in.Since, in.Flapping, in.Stats = st.Reason, st.Since, st.Flapping, st.Stats
		}
		hold, isHeld := held(holds, di.ID)
		switch {
		case isHeld: // an operator's hold overrides source and probe
			in.State, in.Reason, in.Since, in.Flapping = Draining, holdReason(hold), hold.Since, false
		case di.Health == discovery.Maintenance: // the source overrides the probe: its details do not apply
			in.State, in.Reason, in.Since, in.Flapping = Draining, "draining in discovery source", time.Time{}, false
		case di.Health == discovery.Critical, di.Health == discovery.NodeCritical && !probed(st, ok):
			in.State, in.Reason, in.Since, in.Flapping = Unhealthy, "critical in discovery source", time.Time{}, false
		case !ok || st.State == health.Unknown:
			in.State = Unknown
		case st.State == health.Healthy:
			in.State, in.Reason = Healthy, ""
		default:
			in.State = Unhealthy
		}
		u.Instances[i] = in
	}

	// Failover: the first tier (local datacenter, then each fallback) with a healthy instance.
	tier := 0
	tiers := map[int][2]int{} // failover level -> healthy, total
	for i := range u.Instances {
		in := &u.Instances[i]
		if in.State == Draining || in.State == Unknown {
			continue
		}
		c := tiers[in.Failover]
		c[1]++
		if in.State == Healthy {
			c[0]++
		}
		tiers[in.Failover] = c
	}
	if tiers[0][0] == 0 {
		levels := make([]int, 0, len(tiers))
		for l, c := range tiers {
			if c[0] > 0 {
				levels = append(levels, l)
			}
		}
		if len(levels) > 0 {
			tier = slices.Min(levels)
		}
	}
	u.Failover = tier
	u.Healthy, u.Total = tiers[tier][0], tiers[tier][1]
	u.Panic = u.Total > 0 && float64(u.Healthy)*100 < p.PanicThreshold*float64(u.Total)

	// Zone preference within the tier in use: spill over when the local zone is short of healthy instances.
	spill := true
	if p.ZonePreference && zone != "" {
		healthy, total := 0, 0
		for i := range u.Instances {
			in := &u.Instances[i]
			if in.Failover == tier && in.Zone == zone && in.State != Draining {
				total++
				if in.State == Healthy {
					healthy++
				}
			}
		}
		spill = total == 0 || float64(healthy)*100 < p.ZoneMinHealthy*float64(total)
	}

	// Rank: the tier in use first, then the other tiers in order; within a tier, same zone first.
	rank := func(in *Instance) int {
		t := in.Failover - tier
		if t < 0 {
			t = in.Failover + 1<<16 // tiers before the one in use have no healthy instance: last
		}
		r := t * 2
		if p.ZonePreference && zone != "" && in.Zone != zone && !(spill && in.Failover == tier) {
			r++
		}
		return r
	}
	ranks := make([]int, len(u.Instances))
	for i := range u.Instances {
		ranks[i] = rank(&u.Instances[i])
	}
	dense := slices.Clone(ranks)
	slices.Sort(dense)
	dense = slices.Compact(dense)
	for i := range u.Instances {
		in := &u.Instances[i]
		in.Priority, _ = slices.BinarySearch(dense, ranks[i])
		switch {
		case in.Failover != tier || in.State == Draining || in.State == Unknown:
		case in.State == Healthy:
			in.Served = true
		case u.Panic && p.PanicMode == FailOpen:
			in.Served = true
		}
		if in.Served {
			u.Served = append(u.Served, in)
		}
	}
	slices.SortStableFunc(u.Served, func(a, b *Instance) int { return cmp.Compare(a.Priority, b.Priority) })
	u.DCs = dcViews(u.Instances, p)
	return u
}

// dcViews judges each named datacenter's instances on their own, with the same policy:
// healthy ones are served; in panic with fail_open, every probed, not draining one.
func dcViews(ins []Instance, p Policy) map[string]*DC {
	var dcs map[string]*DC
	for i := range ins {
		in := &ins[i]
		if in.Datacenter == "" {
			continue
		}
		if dcs == nil {
			dcs = map[string]*DC{}
		}
		d := dcs[in.Datacenter]
		if d == nil {
			d = &DC{}
			dcs[in.Datacenter] = d
		}
		if in.State == Draining || in.State == Unknown {
			continue
		}
		d.Total++
		if in.State == Healthy {
			d.Healthy++
		}
	}
	for _, d := range dcs {
		d.Panic = d.Total > 0 && float64(d.Healthy)*100 < p.PanicThreshold*float64(d.Total)
	}
	for i := range ins {
		in := &ins[i]
		d := dcs[in.Datacenter]
		if d == nil {
			continue
		}
		if in.State == Healthy || in.State == Unhealthy && d.Panic && p.PanicMode == FailOpen {
			d.Served = append(d.Served, in)
		}
	}
	for _, d := range dcs {
		slices.SortStableFunc(d.Served, func(a, b *Instance) int { return cmp.Compare(a.Priority, b.Priority) })
	}
	return dcs
}
