package share

import (
	"cmp"
	"encoding/json"
	"hash/fnv"
	"slices"

	"github.com/vigil-sidecar/vigil/discovery"
)

// member is a live vigil of this datacenter, as its gossip metadata describes it.
type member struct {
	name string
	zone string
	ups  bloom // the shared upstreams it watches
}

// meta is a member's gossip metadata (at most memberlist.MetaMaxSize bytes).
type meta struct {
	DC   string `json:"dc"`
	Zone string `json:"z,omitempty"`
	Ups  []byte `json:"u"`
}

func (m meta) encode() []byte { b, _ := json.Marshal(m); return b }

// bloom is a Bloom filter of upstream names: a false positive makes a vigil that does not
// watch an upstream count among its owners, and the others then probe it themselves once the
// verdict is missing for max_verdict_age: slower, never wrong.
type bloom [192]byte

const bloomHashes = 4

func (b *bloom) add(name string) {
	for _, i := range bloomIndexes(name) {
		b[i/8] |= 1 << (i % 8)
	}
}

func (b *bloom) has(name string) bool {
	for _, i := range bloomIndexes(name) {
		if b[i/8]&(1<<(i%8)) == 0 {
			return false
		}
	}
	return true
}

func bloomIndexes(name string) [bloomHashes]uint32 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	s := h.Sum64()
	a, c := uint32(s), uint32(s>>32)|1
	var out [bloomHashes]uint32
	for i := range out {
		out[i] = (a + uint32(i)*c) % (uint32(len(bloom{})) * 8)
	}
	return out
}

// score is the rendezvous (highest random weight) score of member name for instance k.
func score(name string, k discovery.Key) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(k.Upstream))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(k.ID))
	x := h.Sum64() // splitmix64 finaliser: FNV's low bits are weak for similar names
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// owners returns the names of the k members that own instance k in zone: among the members
// that watch its upstream, those of its zone first, then by rendezvous score.
func owners(members []member, key discovery.Key, zone string, k int) []string {
	type ranked struct {
		name  string
		local bool
		score uint64
	}
	rs := make([]ranked, 0, len(members))
	for _, m := range members {
		if m.ups.has(key.Upstream) {
			rs = append(rs, ranked{m.name, zone != "" && m.zone == zone, score(m.name, key)})
		}
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if a.local != b.local {
			if a.local {
				return -1
			}
			return 1
		}
		return cmp.Compare(b.score, a.score)
	})
	out := make([]string, 0, k)
	for i := 0; i < len(rs) && i < k; i++ {
		out = append(out, rs[i].name)
	}
	return out
}
