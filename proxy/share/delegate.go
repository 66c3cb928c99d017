package share

import (
	"encoding/json"

	"github.com/hashicorp/memberlist"

	"github.com/vigil-sidecar/vigil/discovery"
)

var (
	_ memberlist.Delegate      = (*Node)(nil)
	_ memberlist.EventDelegate = (*Node)(nil)
)

// broadcast is one verdict in memberlist's queue; a newer one of the same instance replaces it.
type broadcast struct {
	key discovery.Key
	msg []byte
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && ob.key == b.key
}
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}

// NodeMeta is this vigil's datacenter, zone and shared upstreams.
func (n *Node) NodeMeta(limit int) []byte {
	m := meta{DC: n.o.Datacenter, Zone: n.o.Zone}
	var b bloom
	n.mu.Lock()
	for u := range n.shared {
		b.add(u)
	}
	n.mu.Unlock()
	m.Ups = b[:]
	out := m.encode()
	if len(out) > limit {
		return nil
	}
	return out
}

// NotifyMsg receives a broadcast verdict.
func (n *Node) NotifyMsg(b []byte) {
	var v verdict
	if err := json.Unmarshal(b, &v); err == nil {
		n.receive(v)
	}
}

// GetBroadcasts hands memberlist the queued verdicts to piggyback on its gossip.
func (n *Node) GetBroadcasts(overhead, limit int) [][]byte {
	return n.q.GetBroadcasts(overhead, limit)
}

// LocalState is this vigil's verdicts on the instances it owns, for a push/pull exchange
// (anti-entropy, and the whole state for a vigil that joins).
func (n *Node) LocalState(join bool) []byte {
	n.mu.Lock()
	vs := make([]verdict, 0, len(n.own))
	for _, v := range n.own {
		vs = append(vs, v)
	}
	n.mu.Unlock()
	b, _ := json.Marshal(vs)
	return b
}

// MergeRemoteState takes another vigil's verdicts from a push/pull exchange.
func (n *Node) MergeRemoteState(buf []byte, join bool) {
	var vs []verdict
	if err := json.Unmarshal(buf, &vs); err != nil {
		return
	}
	for _, v := range vs {
		v.At = 0 // not a fresh change: keep it out of the delay metric
		n.receive(v)
	}
}

// NotifyJoin, NotifyLeave and NotifyUpdate track the live vigils of this datacenter.
func (n *Node) NotifyJoin(node *memberlist.Node)   { n.track(node, true) }
func (n *Node) NotifyLeave(node *memberlist.Node)  { n.track(node, false) }
func (n *Node) NotifyUpdate(node *memberlist.Node) { n.track(node, true) }

func (n *Node) track(node *memberlist.Node, alive bool) {
	var m meta
	if alive && (json.Unmarshal(node.Meta, &m) != nil || m.DC != n.o.Datacenter || len(m.Ups) != len(bloom{})) {
		alive = false // another datacenter's vigil, or not a vigil
	}
	n.mu.Lock()
	_, was := n.members[node.Name]
	if alive {
		var b bloom
		copy(b[:], m.Ups)
		n.members[node.Name] = member{name: node.Name, zone: m.Zone, ups: b}
	} else {
		delete(n.members, node.Name)
	}
	n.gen++
	count := len(n.members)
	n.alive.Store(int64(count))
	n.mu.Unlock()
	n.met.members.Set(float64(count))
	if was != alive {
		n.log.Info("share: member "+map[bool]string{true: "joined", false: "left"}[alive], "name", node.Name, "members", count)
	}
	select {
	case n.changed <- struct{}{}:
	default:
	}
}
