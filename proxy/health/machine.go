package health

import (
	"fmt"
	"time"
)

// thresholds are the parts of a CheckConfig that the state machine needs.
type thresholds struct {
	Healthy   int // consecutive passes that make an unhealthy instance healthy
	Unhealthy int // consecutive failures that make a healthy instance unhealthy
	Flap      FlapConfig
}

func thresholdsOf(c *CheckConfig) thresholds {
	return thresholds{Healthy: max(c.HealthyThreshold, 1), Unhealthy: max(c.UnhealthyThreshold, 1), Flap: c.Flap}
}

// machine turns a sequence of probe results into a verdict: consecutive thresholds, then flap
// damping. It is pure: the time of each result is passed in, and nothing else is read.
type machine struct {
	raw      State // the thresholds' verdict
	count    int   // consecutive results that disagree with raw
	flapping bool  // held unhealthy by flap damping
	last     int64 // unix ns of the last change of raw
	changes  []int64
}

// State is the effective verdict: raw, unless flap damping holds the instance unhealthy.
func (m *machine) State() State {
	if m.flapping {
		return Unhealthy
	}
	return m.raw
}

// Raw is the thresholds' verdict without flap damping.
func (m *machine) Raw() State { return m.raw }

// Flapping reports whether flap damping holds the instance unhealthy.
func (m *machine) Flapping() bool { return m.flapping }

// Disagrees reports whether a result disagrees with a settled verdict (a change may be under way).
func (m *machine) Disagrees(ok bool) bool {
	return m.raw == Healthy && !ok || m.raw == Unhealthy && ok
}

// Observe feeds one probe result, seen at now, and reports whether State or Flapping changed.
func (m *machine) Observe(now time.Time, ok bool, t thresholds) bool {
	before, beforeFlap := m.State(), m.flapping
	ns := now.UnixNano()
	switch {
	case m.raw == Unknown && ok: // the first result decides at once
		m.raw, m.last = Healthy, ns
	case m.raw == Unknown:
		m.raw, m.last = Unhealthy, ns
	case !m.Disagrees(ok):
		m.count = 0
	default:
		m.count++
		need := t.Unhealthy
		if m.raw == Unhealthy {
			need = t.Healthy
		}
		if m.count >= need {
			m.change(ns, t.Flap)
		}
	}
	switch {
	case t.Flap.Threshold <= 0:
		m.flapping, m.changes = false, nil
	case m.flapping && ns-m.last >= int64(t.Flap.HoldDown):
		// Stable for hold_down: served again, with a fresh history.
		m.flapping, m.changes = false, m.changes[:0]
	}
	return m.State() != before || m.flapping != beforeFlap
}

// change flips raw and counts the change for flap damping.
func (m *machine) change(ns int64, f FlapConfig) {
	if m.raw == Healthy {
		m.raw = Unhealthy
	} else {
		m.raw = Healthy
	}
	m.count, m.last = 0, ns
	if f.Threshold <= 0 {
		return
	}
	keep := m.changes[:0]
	for _, c := range m.changes {
		if ns-c < int64(f.Window) {
			keep = append(keep, c)
		}
	}
	m.changes = append(keep, ns)
	if len(m.changes) > f.Threshold {
		m.flapping = true
	}
}

// flapReason explains a hold-down.
func flapReason(f FlapConfig) string {
	return fmt.Sprintf("flapping: more than %d state changes within %s, held down until stable for %s",
		f.Threshold, f.Window, f.HoldDown)
}
