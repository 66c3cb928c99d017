package share

import (
	"fmt"
	"slices"
	"testing"

	"github.com/vigil-sidecar/vigil/discovery"
)

func members(names []string, zones map[string]string, ups ...string) []member {
	var b bloom
	for _, u := range ups {
		b.add(u)
	}
	out := make([]member, 0, len(names))
	for _, n := range names {
		out = append(out, member{name: n, zone: zones[n], ups: b})
	}
	return out
}

func TestOwnersSpreadAndStability(t *testing.T) {
	names := []string{"v0", "v1", "v2", "v3", "v4"}
	ms := members(names, nil, "web")
	owned := map[string]int{}
	const instances = 5000
	moved := 0
	for i := range instances {
		k := discovery.Key{Upstream: "web", ID: fmt.Sprint("i", i)}
		os := owners(ms, k, "", 2)
		if len(os) != 2 || os[0] == os[1] {
			t.Fatalf("%s: owners %v", k, os)
		}
		for _, o := range os {
			owned[o]++
		}
		// v4 leaves: an instance it did not own keeps its owners; one it owned keeps the other.
		after := owners(ms[:4], k, "", 2)
		switch {
		case !slices.Contains(os, "v4") && !slices.Equal(os, after):
			t.Fatalf("%s: owners %v became %v though v4 owned none", k, os, after)
		case slices.Contains(os, "v4"):
			moved++
			for _, o := range os {
				if o != "v4" && !slices.Contains(after, o) {
					t.Fatalf("%s: surviving owner %s lost it: %v → %v", k, o, os, after)
				}
			}
		}
	}
	for _, n := range names { // each owns about 2/5 of the instances
		if got, want := owned[n], instances*2/5; got < want*85/100 || got > want*115/100 {
			t.Errorf("%s owns %d instances, want about %d", n, got, want)
		}
	}
	t.Logf("owned per member: %v; moved when v4 left: %d of %d", owned, moved, instances)
}

func TestOwnersZoneAndUpstream(t *testing.T) {
	zones := map[string]string{"v0": "a", "v1": "a", "v2": "b", "v3": "b"}
	ms := members([]string{"v0", "v1", "v2", "v3"}, zones, "web")
	ms = append(ms, members([]string{"x"}, map[string]string{"x": "a"}, "db")...) // does not watch web
	for i := range 200 {
		k := discovery.Key{Upstream: "web", ID: fmt.Sprint(i)}
		if os := owners(ms, k, "b", 2); !slices.Contains(os, "v2") || !slices.Contains(os, "v3") {
			t.Fatalf("%s in zone b: owners %v, want v2 and v3", k, os)
		}
		if os := owners(ms, k, "a", 3); len(os) != 3 || slices.Contains(os, "x") || !slices.Contains(os, "v0") || !slices.Contains(os, "v1") {
			t.Fatalf("%s in zone a: owners %v, want v0, v1 and one of zone b, never x", k, os)
		}
	}
	var b bloom
	b.add("web")
	if !b.has("web") || b.has("db") {
		t.Error("bloom: want web only")
	}
}
