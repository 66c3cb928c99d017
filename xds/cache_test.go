package xds

import (
	"slices"
	"strconv"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
)

func cla(name string, port uint32) types.Resource {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: socketAddress("127.0.0.1", port)}}}},
	}}}
}

func sotwNames(t *testing.T, r cachev3.Response) []string {
	t.Helper()
	dr, _ := r.GetDiscoveryResponse()
	var out []string
	for _, a := range dr.Resources {
		out = append(out, firstString(a.Value))
	}
	slices.Sort(out)
	return out
}

// sotwRound opens a watch for sub as the server would, and returns the response, if any, at once.
func sotwRound(t *testing.T, c *incCache, sub *stream.Subscription, version string) cachev3.Response {
	t.Helper()
	ch := make(chan cachev3.Response, 1)
	cancel, err := c.CreateWatch(&cachev3.Request{TypeUrl: resourcev3.EndpointType, VersionInfo: version}, *sub, ch)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-ch:
		sub.SetReturnedResources(r.GetReturnedResources())
		return r
	default:
		cancel()
		return nil
	}
}

func TestIncCacheSotw(t *testing.T) {
	c := newIncCache(resourcev3.EndpointType, "7.")
	c.UpdateResources(map[string]types.Resource{"a": cla("a", 1), "b": cla("b", 2), "c": cla("c", 3)}, nil)

	wild := stream.NewSotwSubscription(nil, true)
	named := stream.NewSotwSubscription([]string{"b", "c"}, true)
	if r := sotwRound(t, c, &wild, ""); !slices.Equal(sotwNames(t, r), []string{"a", "b", "c"}) {
		t.Fatalf("wildcard first response: %v", sotwNames(t, r))
	}
	r := sotwRound(t, c, &named, "")
	if !slices.Equal(sotwNames(t, r), []string{"b", "c"}) {
		t.Fatalf("named first response: %v", sotwNames(t, r))
	}
	v := r.GetResponseVersion()
	if v != "7.1" {
		t.Fatalf("version %q", v)
	}
	// An ACK with nothing new: no response, the watch waits.
	if r := sotwRound(t, c, &named, v); r != nil {
		t.Fatalf("response to an up-to-date ACK: %v", sotwNames(t, r))
	}

	// A change to a: the wildcard watch gets a alone; the named one nothing.
	chW, chN := make(chan cachev3.Response, 1), make(chan cachev3.Response, 1)
	c.CreateWatch(&cachev3.Request{TypeUrl: resourcev3.EndpointType, VersionInfo: v}, wild, chW)
	cancelN, _ := c.CreateWatch(&cachev3.Request{TypeUrl: resourcev3.EndpointType, VersionInfo: v}, named, chN)
	c.UpdateResources(map[string]types.Resource{"a": cla("a", 10)}, nil)
	select {
	case r := <-chW:
		if got := sotwNames(t, r); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("after a change: %v", got)
		}
		wild.SetReturnedResources(r.GetReturnedResources())
	default:
		t.Fatal("no response to a change")
	}
	select {
	case r := <-chN:
		t.Fatalf("named watch got %v for a change it does not subscribe to", sotwNames(t, r))
	default:
	}
	cancelN()

	// The named client adds a: it gets a (sotw sends what it lacks).
	named.SetResourceSubscription([]string{"a", "b", "c"})
	if r := sotwRound(t, c, &named, v); !slices.Equal(sotwNames(t, r), []string{"a"}) {
		t.Fatalf("after subscribing to a: %v", r)
	}

	// Many changes to other resources, beyond the log's length: a client that falls behind
	// the log is compared in full and gets exactly what changed.
	stale := stream.NewSotwSubscription(nil, true)
	sotwRound(t, c, &stale, "")
	for i := range 5000 {
		c.UpdateResources(map[string]types.Resource{"x" + strconv.Itoa(i%100): cla("x", uint32(i))}, nil)
	}
	if c.logBase == 0 {
		t.Fatal("the log was not compacted")
	}
	if r := sotwRound(t, c, &stale, "7.2"); len(sotwNames(t, r)) != 100 {
		t.Fatalf("behind the log: %d resources", len(sotwNames(t, r)))
	}
	if r := sotwRound(t, c, &stale, r2v(c)); r != nil {
		t.Fatalf("after catching up: %v", sotwNames(t, r))
	}
}

func r2v(c *incCache) string { return c.prefix + strconv.FormatUint(c.version, 10) }

func TestIncCacheDelta(t *testing.T) {
	c := newIncCache(resourcev3.EndpointType, "7.")
	c.UpdateResources(map[string]types.Resource{"a": cla("a", 1), "b": cla("b", 2)}, nil)
	round := func(sub *stream.Subscription, req *cachev3.DeltaRequest) *incDeltaResponse {
		t.Helper()
		req.TypeUrl = resourcev3.EndpointType
		ch := make(chan cachev3.DeltaResponse, 1)
		cancel, _ := c.CreateDeltaWatch(req, *sub, ch)
		select {
		case r := <-ch:
			sub.SetReturnedResources(r.GetNextVersionMap())
			return r.(*incDeltaResponse)
		default:
			cancel()
			return nil
		}
	}
	names := func(r *incDeltaResponse) (out []string) {
		for _, x := range r.res {
			out = append(out, x.Name)
		}
		slices.Sort(out)
		return out
	}
	// A client that comes back with the versions it holds: its initial map is not modified.
	initial := map[string]string{"a": "7.1", "b": "6.1"}
	sub := stream.NewDeltaSubscription([]string{"*"}, nil, initial, true)
	r := round(&sub, &cachev3.DeltaRequest{ResourceNamesSubscribe: []string{"*"}})
	if got := names(r); !slices.Equal(got, []string{"b"}) || initial["b"] != "6.1" || len(initial) != 2 {
		t.Fatalf("first response %v, initial versions now %v", got, initial)
	}
	// Removal and change together.
	ch := make(chan cachev3.DeltaResponse, 1)
	c.CreateDeltaWatch(&cachev3.DeltaRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: "1"}, sub, ch)
	c.UpdateResources(map[string]types.Resource{"c": cla("c", 3)}, []string{"a"})
	r = (<-ch).(*incDeltaResponse)
	sub.SetReturnedResources(r.next)
	if got := names(r); !slices.Equal(got, []string{"c"}) || !slices.Equal(r.removed, []string{"a"}) {
		t.Fatalf("after a change and a removal: %v, removed %v", got, r.removed)
	}
	// Unsubscribing from one name while wildcard: it is sent again (its known version is reset).
	sub.UpdateResourceSubscriptions(nil, []string{"c"})
	if r := round(&sub, &cachev3.DeltaRequest{ResponseNonce: "2", ResourceNamesUnsubscribe: []string{"c"}}); r == nil || !slices.Equal(names(r), []string{"c"}) {
		t.Fatalf("after unsubscribing c while wildcard: %v", r)
	}
	// Nothing new: no response.
	if r := round(&sub, &cachev3.DeltaRequest{ResponseNonce: "3"}); r != nil {
		t.Fatalf("response with nothing new: %v", names(r))
	}
}
