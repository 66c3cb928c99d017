package admin

import (
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// Table is the JSON form of a snapshot (GET /v1/upstreams).
type Table struct {
	Version   uint64     `json:"version"`
	Ready     bool       `json:"ready"`
	Upstreams []Upstream `json:"upstreams"`
	// Now is the server's time of this view, for durations computed by clients.
	Now time.Time `json:"now"`
	// Transitions are the recent state changes of all instances, oldest first (bounded).
	Transitions []Transition `json:"transitions,omitempty"`
}

// Upstream is the JSON form of one upstream (GET /v1/upstreams/{name}).
type Upstream struct {
	Name string `json:"name"`
	// Local marks the local service (the `service:` section, upstream "local:NAME"): probed
	// like any instance for the Consul registration, never served by DNS, xDS or the forwarder.
	Local    bool         `json:"local,omitempty"`
	Version  uint64       `json:"version"`
	Healthy  int          `json:"healthy"`
	Total    int          `json:"total"`
	Served   int          `json:"served"`
	Panic    bool         `json:"panic"`
	Failover int          `json:"failover"`
	Policy   table.Policy `json:"policy"`
	// Synced is the last successful sync, present only while discovery cannot reach the upstream's origin.
	Synced time.Time `json:"synced,omitzero"`
	// StalenessSeconds is the time since Synced, present only with it.
	StalenessSeconds *float64   `json:"staleness_seconds,omitempty"`
	Instances        []Instance `json:"instances"`
}

// Instance is the JSON form of one instance.
type Instance struct {
	discovery.Instance
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Since    time.Time `json:"since,omitzero"`
	Flapping bool      `json:"flapping,omitempty"`
	Served   bool      `json:"served"`
	Priority int       `json:"priority"`
	Probe    Probe     `json:"probe"`
	// Samples are the recent probe results, oldest first (bounded).
	Samples []Sample `json:"samples,omitempty"`
	// Transitions are the instance's recent state changes, oldest first (bounded).
	Transitions []Transition `json:"transitions,omitempty"`
}

// Probe is the JSON form of an instance's live probe statistics.
type Probe struct {
	LastProbe time.Time `json:"last_probe,omitzero"`
	LatencyMS float64   `json:"latency_ms"`
	Probes    uint64    `json:"probes"`
	Failures  uint64    `json:"failures"`
	LastError string    `json:"last_error,omitempty"`
}

func upstreamJSON(u *table.Upstream, now time.Time, h *history) Upstream {
	out := Upstream{
		Name: u.Name, Local: u.Local, Version: u.Version, Healthy: u.Healthy, Total: u.Total, Served: len(u.Served),
		Panic: u.Panic, Failover: u.Failover, Policy: u.Policy, Synced: u.Synced,
		Instances: make([]Instance, len(u.Instances)),
	}
	if !u.Synced.IsZero() {
		s := now.Sub(u.Synced).Seconds()
		out.StalenessSeconds = &s
	}
	for i := range u.Instances {
		in := &u.Instances[i]
		st := in.Stats.Load()
		out.Instances[i] = Instance{
			Instance: in.Instance, State: in.State.String(), Reason: in.Reason, Since: in.Since,
			Flapping: in.Flapping, Served: in.Served, Priority: in.Priority,
			Probe: Probe{LastProbe: st.LastProbe, LatencyMS: float64(st.Latency) / 1e6, Probes: st.Probes,
				Failures: st.Failures, LastError: st.LastError},
		}
		if h != nil {
			out.Instances[i].Samples, out.Instances[i].Transitions = h.instance(discovery.Key{Upstream: u.Name, ID: in.ID})
		}
	}
	return out
}

// view is the JSON form of snap with the recorded history.
func view(snap *table.Snapshot, now time.Time, h *history) Table {
	out := Table{Version: snap.Version, Ready: snap.Ready, Now: now, Upstreams: make([]Upstream, 0, len(snap.Names))}
	for _, name := range snap.Names {
		out.Upstreams = append(out.Upstreams, upstreamJSON(snap.Upstreams[name], now, h))
	}
	if h != nil {
		out.Transitions = h.recentList()
	}
	return out
}
