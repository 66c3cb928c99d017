package table

import (
	"cmp"
	"slices"
	"time"
)

// Hold is an operator's maintenance of one instance, or of a whole upstream: while held, the
// instance is Draining, so no frontend serves it (DNS omits it, xDS says DRAINING, the forwarder
// opens no new connection to it) whatever its probes say.
type Hold struct {
	Upstream string `json:"upstream"`
	// Instance is the instance ID; "" holds every instance of the upstream.
	Instance string `json:"instance,omitempty"`
	// Reason and Actor say why and who; Since when.
	Reason string    `json:"reason,omitempty"`
	Actor  string    `json:"actor,omitempty"`
	Since  time.Time `json:"since"`
}

// Target is the hold's upstream, or upstream/instance.
func (h Hold) Target() string {
	if h.Instance == "" {
		return h.Upstream
	}
	return h.Upstream + "/" + h.Instance
}

// holdReason is what a held instance's Reason says.
func holdReason(h Hold) string {
	if h.Reason == "" {
		return "maintenance"
	}
	return "maintenance: " + h.Reason
}

// SetHolds replaces the maintenance holds and rebuilds the upstreams whose holds changed.
func (t *Table) SetHolds(holds []Hold) {
	t.mu.Lock()
	defer t.mu.Unlock()
	next := map[string]map[string]Hold{}
	for _, h := range holds {
		if next[h.Upstream] == nil {
			next[h.Upstream] = map[string]Hold{}
		}
		next[h.Upstream][h.Instance] = h
	}
	var changed []string
	for name := range t.mem.Upstreams {
		if !sameHolds(t.holds[name], next[name]) {
			changed = append(changed, name)
		}
	}
	t.holds = next
	if len(changed) > 0 {
		t.rebuild(changed)
	}
}

// Holds returns the maintenance holds, by target.
func (t *Table) Holds() []Hold {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Hold
	for _, m := range t.holds {
		for _, h := range m {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, func(a, b Hold) int { return cmp.Compare(a.Target(), b.Target()) })
	return out
}

func sameHolds(a, b map[string]Hold) bool {
	if len(a) != len(b) {
		return false
	}
	for k, h := range a {
		if g, ok := b[k]; !ok || g.Reason != h.Reason || !g.Since.Equal(h.Since) {
			return false
		}
	}
	return true
}

// held returns the hold on instance id of an upstream whose holds are hs.
func held(hs map[string]Hold, id string) (Hold, bool) {
	if h, ok := hs[id]; ok {
		return h, true
	}
	h, ok := hs[""]
	return h, ok
}
