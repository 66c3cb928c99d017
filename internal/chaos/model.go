package chaos

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// model is the truth the injector makes (which instances answer, since when; whether vigil is
// up) and the tally of what the observers checked against it.
type model struct {
	window time.Duration // detection window: after it, a changed instance must be seen changed
	grace  time.Duration // after vigil is ready: its first probe round

	mu         sync.Mutex
	byIP       map[string]*instance
	vigilReady time.Time // zero while vigil is down or starting
	faults     map[string]int
	checks     map[string]int
	served     map[string]int // answers, calls and connections served, by client
	clientErrs map[string]int // client requests that failed (not violations by themselves)
	violations []string
	nviolation map[string]int
}

func newModel(window, grace time.Duration, ins []*instance) *model {
	m := &model{window: window, grace: grace, byIP: map[string]*instance{}, faults: map[string]int{},
		checks: map[string]int{}, served: map[string]int{}, clientErrs: map[string]int{}, nviolation: map[string]int{}}
	for _, in := range ins {
		m.byIP[in.ip] = in
	}
	return m
}

func (m *model) fault(kind string) {
	m.mu.Lock()
	m.faults[kind]++
	m.mu.Unlock()
}

// setAlive records an instance's new state; the injector calls it just before a kill or hang
// and just after a revived instance accepts connections.
func (m *model) setAlive(in *instance, alive bool) {
	m.mu.Lock()
	in.alive, in.since = alive, time.Now()
	m.mu.Unlock()
}

func (m *model) setVigilReady(ready bool) {
	m.mu.Lock()
	if ready {
		m.vigilReady = time.Now()
	} else {
		m.vigilReady = time.Time{}
	}
	m.mu.Unlock()
}

// vigilUpSince is when vigil became ready, zero while it is down.
func (m *model) vigilUpSince() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.vigilReady
}

func (m *model) violate(kind, format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nviolation[kind]++
	m.note(kind, format, args...)
}

func (m *model) count(check string) {
	m.mu.Lock()
	m.checks[check]++
	m.mu.Unlock()
}

func (m *model) serve(client string, ok bool) {
	m.mu.Lock()
	if ok {
		m.served[client]++
	} else {
		m.clientErrs[client]++
	}
	m.mu.Unlock()
}

// upAcross reports whether vigil was ready since at least after before sent, until now (a failed
// request in between is then vigil's).
func (m *model) upAcross(sent time.Time, after time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.vigilReady.IsZero() && m.vigilReady.Add(after).Before(sent)
}

// checkServed checks one observed served set of kind k's upstream, asked at sent: once the
// window has passed, no dead instance is in it and every live one is (from the grace after
// vigil's start). An instance that changed after sent is not judged on this answer. why, if
// not nil, says why an instance is not served (for the report).
func (m *model) checkServed(client string, k Kind, served map[string]bool, why map[string]string, sent time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.vigilReady.IsZero() || !m.vigilReady.Before(sent) {
		return
	}
	for ip, in := range m.byIP {
		if in.kind != k || sent.Sub(in.since) < m.window {
			continue
		}
		switch {
		case !in.alive:
			m.checks["dead instance not served ("+client+")"]++
			if served[ip] {
				m.nviolation["dead instance served"]++
				m.note("dead instance served", "%s: %s dead for %s", client, in.id, sent.Sub(in.since).Round(time.Millisecond))
			}
		case sent.Sub(m.vigilReady) >= m.grace:
			m.checks["live instance served ("+client+")"]++
			if !served[ip] {
				m.nviolation["live instance dropped"]++
				m.note("live instance dropped", "%s: %s alive for %s, vigil up %s %s", client, in.id,
					sent.Sub(in.since).Round(time.Millisecond), sent.Sub(m.vigilReady).Round(time.Millisecond), why[ip])
			}
		}
	}
}

// note records a violation's text; the caller holds mu and has counted it.
func (m *model) note(kind, format string, args ...any) {
	if len(m.violations) < 50 {
		m.violations = append(m.violations, time.Now().Format("15:04:05.000")+" "+kind+": "+fmt.Sprintf(format, args...))
	}
}

// Report is what a chaos run did and found.
type Report struct {
	Seed       uint64
	Duration   time.Duration
	Window     time.Duration
	Grace      time.Duration
	Faults     map[string]int
	Checks     map[string]int
	Served     map[string]int
	ClientErrs map[string]int
	Violations map[string]int
	Examples   []string
	Slopes     *Slopes // a soak run's resource slopes
}

func (m *model) report(seed uint64, d time.Duration) *Report {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := func(src map[string]int) map[string]int {
		out := make(map[string]int, len(src))
		for k, v := range src {
			out[k] = v
		}
		return out
	}
	return &Report{Seed: seed, Duration: d, Window: m.window, Grace: m.grace, Faults: cp(m.faults), Checks: cp(m.checks),
		Served: cp(m.served), ClientErrs: cp(m.clientErrs), Violations: cp(m.nviolation), Examples: append([]string(nil), m.violations...)}
}

// TotalViolations is the number of invariant violations.
func (r *Report) TotalViolations() int {
	n := 0
	for _, v := range r.Violations {
		n += v
	}
	return n
}

// String is the report as Markdown tables.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chaos run: seed %d, %s, detection window %s, start grace %s\n\n", r.Seed, r.Duration.Round(time.Second), r.Window, r.Grace)
	table := func(title, col string, m map[string]int) {
		fmt.Fprintf(&b, "| %s | %s |\n|---|---:|\n", title, col)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "| %s | %d |\n", k, m[k])
		}
		if len(keys) == 0 {
			fmt.Fprintf(&b, "| (none) | 0 |\n")
		}
		b.WriteString("\n")
	}
	table("fault injected", "count", r.Faults)
	table("invariant checked", "checks", r.Checks)
	table("served (client)", "count", r.Served)
	table("client errors (not violations)", "count", r.ClientErrs)
	table("violation", "count", r.Violations)
	for _, e := range r.Examples {
		fmt.Fprintf(&b, "- %s\n", e)
	}
	if r.Slopes != nil {
		b.WriteString("\n" + r.Slopes.String())
	}
	return b.String()
}

// checkForward judges a request through the forwarder sent at sent (err: how it failed, or
// nil). Once every dead instance of the kind has been dead for the window, at least one has
// been alive for it, and vigil has been up past its grace, it must not fail. Before that the L4
// forwarder may have picked an instance that hung or died with the request in flight, which it
// cannot replay.
func (m *model) checkForward(k Kind, sent time.Time, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.vigilReady.IsZero() || sent.Sub(m.vigilReady) < m.grace {
		return
	}
	settled, live := true, false
	for _, in := range m.byIP {
		if in.kind != k {
			continue
		}
		if sent.Sub(in.since) < m.window {
			settled = false
		} else if in.alive {
			live = true
		}
	}
	if !settled || !live {
		return
	}
	m.checks["forwarder request served (settled)"]++
	if err != nil {
		m.nviolation["forwarder request failed"]++
		m.note("forwarder request failed", "%s: %v", k.Upstream(), err)
	}
}

// checkAnsweredID checks that an answer through the forwarder came from a live instance of kind k.
func (m *model) checkAnsweredID(client string, k Kind, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checks["forwarder answer from an instance of the upstream"]++
	for _, in := range m.byIP {
		if in.id == id && in.kind == k {
			return
		}
	}
	m.nviolation["answer from the wrong instance"]++
	m.note("answer from the wrong instance", "%s: %s answered for %s", client, id, k.Upstream())
}
