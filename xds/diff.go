package xds

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
)

// diff adds to upd the resources of next that are new or differ from prev, and to del
// the names in prev that next no longer has. Either may be nil.
func diff(prev, next *Resources, upd *[nKinds]map[string]types.Resource, del *[nKinds][]string) {
	if prev == nil {
		prev = &Resources{}
	}
	if next == nil {
		next = &Resources{}
	}
	diffKind(prev.Clusters, next.Clusters, upd[kindCluster], &del[kindCluster])
	diffKind(prev.Endpoints, next.Endpoints, upd[kindEndpoint], &del[kindEndpoint])
	diffKind(prev.Listeners, next.Listeners, upd[kindListener], &del[kindListener])
	diffKind(prev.APIListeners, next.APIListeners, upd[kindAPIListener], &del[kindAPIListener])
	diffKind(prev.Routes, next.Routes, upd[kindRoute], &del[kindRoute])
}

func diffKind[M ~map[string]T, T proto.Message](prev, next M, upd map[string]types.Resource, del *[]string) {
	for name, r := range next {
		if p, ok := prev[name]; !ok || !proto.Equal(p, r) {
			upd[name] = r
		}
	}
	for name := range prev {
		if _, ok := next[name]; !ok {
			*del = append(*del, name)
		}
	}
}
