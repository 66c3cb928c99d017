// Package health actively probes upstream instances and decides which of them are alive.
package health

import (
	"sync/atomic"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
)

// State is the checker's verdict on an instance.
type State uint8

const (
	Unknown   State = iota // no verdict yet: not served
	Healthy                // passed healthy_threshold consecutive probes
	Unhealthy              // failed unhealthy_threshold consecutive probes, or is held down for flapping
)

func (s State) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	default:
		return "unknown"
	}
}

// Status is the checker's current verdict on one instance.
type Status struct {
	State  State
	Reason string    // why, e.g. the last probe error; empty when healthy
	Since  time.Time // when State last changed
	// Flapping is true while the instance is held unhealthy by flap damping.
	Flapping bool
	// Stats are the instance's live probe statistics; shared, updated in place, never nil.
	Stats *Stats
}

// Sink receives the checker's verdicts. The checker calls it from one goroutine at a time.
type Sink interface {
	// SetMembership replaces the set of instances, with the status of each.
	SetMembership(m discovery.Membership, statuses map[discovery.Key]Status)
	// SetStatus records a change in one instance's status.
	SetStatus(k discovery.Key, s Status)
}

// Stats are live probe statistics of one instance, written by its prober and read by anyone.
type Stats struct {
	latency   atomic.Int64 // of the last probe, ns
	last      atomic.Int64 // unix ns of the last probe's end
	probes    atomic.Uint64
	failures  atomic.Uint64
	lastError atomic.Pointer[string]
}

// StatsView is a copy of Stats at one time.
type StatsView struct {
	LastProbe time.Time     `json:"last_probe,omitzero"`
	Latency   time.Duration `json:"latency_ns"`
	Probes    uint64        `json:"probes"`
	Failures  uint64        `json:"failures"`
	LastError string        `json:"last_error,omitempty"`
}

// Record notes the result of one probe.
func (s *Stats) Record(end time.Time, latency time.Duration, err error) {
	s.latency.Store(int64(latency))
	s.last.Store(end.UnixNano())
	s.probes.Add(1)
	if err != nil {
		s.failures.Add(1)
		msg := err.Error()
		s.lastError.Store(&msg)
	} else {
		s.lastError.Store(nil)
	}
}

// Load returns a copy of the statistics; it is safe on a nil *Stats.
func (s *Stats) Load() StatsView {
	if s == nil {
		return StatsView{}
	}
	v := StatsView{Latency: time.Duration(s.latency.Load()), Probes: s.probes.Load(), Failures: s.failures.Load()}
	if ns := s.last.Load(); ns != 0 {
		v.LastProbe = time.Unix(0, ns)
	}
	if e := s.lastError.Load(); e != nil {
		v.LastError = *e
	}
	return v
}
