package health

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
)

// Sharer shares the probing of instances with other vigils (proxy/share). The checker asks it
// whether this vigil owns an instance (probes it at the full rate) and tells it each change of
// its own verdict. Neither method may call back into the checker.
type Sharer interface {
	// Owns reports whether this vigil actively probes k, an instance in zone.
	Owns(k discovery.Key, zone string) bool
	// Verdict is told every change of this vigil's own verdict on k (its own probes and
	// passive signals, never a shared verdict). It must not block.
	Verdict(k discovery.Key, zone string, s State, reason string)
}

// sharedPrefix starts the reason of a verdict taken from the instance's owners.
const sharedPrefix = "shared: "

// shareState is a prober's part in shared probing. Guarded by the prober's mu.
type shareState struct {
	zone    string
	owned   bool   // probed at the full rate; true when sharing is off
	has     bool   // a shared verdict is applied
	healthy bool   // the shared verdict
	reason  string // its reason
}

// SetSharer makes c share probing through s, with non-owned instances probed every idle
// interval (their watch connection and passive signals still trigger a probe at once). Call
// it before Run.
func (c *Checker) SetSharer(s Sharer, idle time.Duration) {
	c.sharer, c.shareIdle = s, idle
}

// owns asks the sharer whether p is owned and records the answer. Called with p.mu held.
func (p *prober) owns() bool {
	s := p.c.sharer
	p.sh.owned = s == nil || s.Owns(p.key, p.sh.zone)
	return p.sh.owned
}

// nextInterval is the interval to the next scheduled probe. A non-owner that has no own
// evidence of failure probes at the idle interval. Called with p.mu held.
func (p *prober) nextInterval() time.Duration {
	unhealthy := p.m.State() == Unhealthy
	if p.owns() || unhealthy || p.c.shareIdle <= 0 {
		return p.chk.interval(p.status.State == Unhealthy)
	}
	return jitterIdle(p.c.shareIdle)
}

// overlay applies the shared verdict to st, the own verdict: own evidence of failure always
// wins, then an owner's unhealthy verdict. Called with p.mu held.
func (p *prober) overlay(st Status) Status {
	if !p.sh.has || p.sh.healthy || st.State == Unhealthy || p.sh.owned {
		return st
	}
	st.State, st.Reason = Unhealthy, sharedPrefix+p.sh.reason
	return st
}

// tellSharer passes a change of the own verdict to the sharer. Called with p.mu held.
func (p *prober) tellSharer(before State, reason string) {
	if s := p.c.sharer; s != nil && p.m.State() != before {
		s.Verdict(p.key, p.sh.zone, p.m.State(), reason)
	}
}

// ApplyVerdict sets the owners' verdict on k in this vigil (a non-owner). It makes k unhealthy
// unless healthy; it never makes healthy an instance that this vigil's own evidence holds down.
func (c *Checker) ApplyVerdict(k discovery.Key, healthy bool, reason string) {
	c.withProber(k, func(p *prober) {
		if p.sh.has && p.sh.healthy == healthy && p.sh.reason == reason {
			return
		}
		fresh := !p.sh.has
		p.sh.has, p.sh.healthy, p.sh.reason = true, healthy, reason
		p.republish()
		if fresh && !p.owns() && p.m.State() == Healthy && p.c.shareIdle > 0 {
			// taken over by the owners: the probe scheduled at the full rate is not needed
			// (an instance not yet seen pass by this vigil keeps its own probes)
			p.c.sched.postpone(p, p.c.sched.now()+int64(jitterIdle(p.c.shareIdle)))
		}
	})
}

// ClearVerdict drops the owners' verdict on k (stale, or this vigil now owns k) and probes k at once.
func (c *Checker) ClearVerdict(k discovery.Key) {
	c.withProber(k, func(p *prober) {
		if !p.sh.has {
			return
		}
		p.sh = shareState{zone: p.sh.zone, owned: p.sh.owned}
		p.republish()
		if !p.inflight {
			p.c.sched.advance(p, p.c.sched.now())
		}
	})
}

// Reowned asks the sharer again which instances this vigil owns; one that became owned is
// probed soon (within its edge interval) and loses any shared verdict.
func (c *Checker) Reowned() {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, u := range c.ups {
		for _, p := range u.probers {
			p.mu.Lock()
			was := p.sh.owned
			if now := p.owns(); now && !was && !p.stopped && p.chk.cfg.Kind != KindNone {
				if p.sh.has {
					p.sh = shareState{zone: p.sh.zone, owned: true}
					p.republish()
				}
				if !p.inflight {
					p.c.sched.advance(p, p.c.sched.now()+int64(spread(p.chk.cfg.EdgeInterval)))
				}
			}
			p.mu.Unlock()
		}
	}
}

// OwnVerdict is this vigil's own verdict on an instance.
type OwnVerdict struct {
	Key    discovery.Key
	Zone   string
	State  State
	Reason string
}

// OwnVerdicts returns this vigil's own verdict on every instance it follows.
func (c *Checker) OwnVerdicts() []OwnVerdict {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []OwnVerdict
	for _, u := range c.ups {
		for _, p := range u.probers {
			p.mu.Lock()
			v := OwnVerdict{Key: p.key, Zone: p.sh.zone, State: p.m.State()}
			if v.State == Unhealthy { // own evidence wins, so the status is the own one
				v.Reason = p.status.Reason
			}
			p.mu.Unlock()
			out = append(out, v)
		}
	}
	return out
}

// withProber runs f with k's prober locked, if k is followed and probed.
func (c *Checker) withProber(k discovery.Key, f func(p *prober)) {
	c.mu.RLock()
	var p *prober
	if u := c.ups[k.Upstream]; u != nil {
		p = u.probers[k.ID]
	}
	c.mu.RUnlock()
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || p.chk.cfg.Kind == KindNone {
		return
	}
	f(p)
}

// republish recomputes the status from the own verdict and the shared one. Called with p.mu held.
func (p *prober) republish() {
	st := p.status
	own := p.m.State()
	st.State, st.Flapping = own, p.m.Flapping()
	switch {
	case own == Healthy || own == Unknown:
		st.Reason = ""
	case strings.HasPrefix(st.Reason, sharedPrefix) || st.Reason == "":
		st.Reason = p.stats.Load().LastError
	}
	st = p.overlay(st)
	if st.State == p.status.State && st.Reason == p.status.Reason && st.Flapping == p.status.Flapping {
		return
	}
	now := time.Now()
	if st.State != p.status.State {
		st.Since = now
		p.changed = now
		p.up.met.changes[causeShared].Inc()
		if st.State == Healthy {
			p.up.met.toHealthy.Inc()
		} else if st.State == Unhealthy {
			p.up.met.toUnhealthy.Inc()
		}
		p.c.log.Log(context.Background(), slog.LevelInfo, "health: instance "+st.State.String()+" (shared verdict)",
			"upstream", p.key.Upstream, "id", p.key.ID, "address", p.hostport, "reason", st.Reason)
	}
	p.status = st
	p.c.markDirty(p)
}

// jitterIdle spreads d by up to a tenth either way.
func jitterIdle(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d - d/10 + rand.N(d/5+1)
}

// postpone moves p's next probe later, to due, if p is in the heap.
func (s *sched) postpone(p *prober, due int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.idx < 0 || due <= p.due {
		return
	}
	p.due = due
	s.down(p.idx)
}
