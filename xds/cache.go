package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// incCache serves one resource type whose state-of-the-world responses carry only the
// resources that changed (endpoints). go-control-plane's LinearCache compares every
// resource with what each client holds, twice per change (to answer, then to re-arm the
// watch after the ACK): O(clients × resources) per change. incCache keeps a log of changes
// and notes in each client's returned versions the cache version they reflect, so that a
// change costs O(clients × changed resources).
type incCache struct {
	typeURL string
	prefix  string

	mu      sync.Mutex
	version uint64
	res     map[string]*incEntry
	log     []incChange // in version order; entries at or below logBase were dropped
	logBase uint64
	watches map[*incWatch]struct{}
}

// syncedKey is the entry of a returned-versions map that holds the cache version the map
// reflects (it is no resource name: names are never empty).
const syncedKey = ""

type incEntry struct {
	any     *anypb.Any
	version string
}

type incChange struct {
	version uint64
	name    string
}

type incWatch struct {
	sub   cachev3.Subscription
	sreq  *cachev3.Request
	sresp chan cachev3.Response
	dreq  *cachev3.DeltaRequest
	dresp chan cachev3.DeltaResponse
}

var _ cachev3.Cache = (*incCache)(nil)

func newIncCache(typeURL, prefix string) *incCache {
	return &incCache{typeURL: typeURL, prefix: prefix, res: map[string]*incEntry{}, watches: map[*incWatch]struct{}{}}
}

// UpdateResources sets and deletes resources, and answers the watches they concern.
func (c *incCache) UpdateResources(toUpdate map[string]types.Resource, toDelete []string) error {
	anys := make(map[string]*anypb.Any, len(toUpdate))
	for name, r := range toUpdate {
		b, err := cachev3.MarshalResource(r)
		if err != nil {
			return fmt.Errorf("xds: marshal %s: %w", name, err)
		}
		anys[name] = &anypb.Any{TypeUrl: c.typeURL, Value: b}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.version++
	v := c.prefix + strconv.FormatUint(c.version, 10)
	changed := make([]string, 0, len(anys)+len(toDelete))
	for name, a := range anys {
		c.res[name] = &incEntry{any: a, version: v}
		changed = append(changed, name)
	}
	for _, name := range toDelete {
		delete(c.res, name)
		changed = append(changed, name)
	}
	for _, name := range changed {
		c.log = append(c.log, incChange{c.version, name})
	}
	if limit := 2*len(c.res) + 1024; len(c.log) > 2*limit {
		drop := len(c.log) - limit
		c.logBase = c.log[drop-1].version
		c.log = append(c.log[:0:0], c.log[drop:]...)
	}
	for w := range c.watches {
		if c.respond(w, changed, false) {
			delete(c.watches, w)
		}
	}
	return nil
}

// candidates returns the names that may differ from what sub holds, or nil, false when
// every subscribed resource must be compared.
func (c *incCache) candidates(sub cachev3.Subscription, extra []string) ([]string, bool) {
	s, ok := sub.ReturnedResources()[syncedKey]
	if !ok {
		return nil, false
	}
	since, err := strconv.ParseUint(s, 10, 64)
	if err != nil || since < c.logBase || since > c.version {
		return nil, false
	}
	// The log is in version order: find the first change after since.
	lo, hi := 0, len(c.log)
	for lo < hi {
		m := (lo + hi) / 2
		if c.log[m].version <= since {
			lo = m + 1
		} else {
			hi = m
		}
	}
	names := make([]string, 0, len(c.log)-lo+len(extra))
	for _, ch := range c.log[lo:] {
		names = append(names, ch.name)
	}
	return append(names, extra...), true
}

// all returns every name the subscription may hold or want.
func (c *incCache) all(sub cachev3.Subscription) []string {
	var names []string
	if sub.IsWildcard() {
		names = make([]string, 0, len(c.res)+len(sub.ReturnedResources()))
		for name := range c.res {
			names = append(names, name)
		}
	} else {
		for name := range sub.SubscribedResources() {
			names = append(names, name)
		}
	}
	for name := range sub.ReturnedResources() {
		if _, ok := c.res[name]; !ok && name != syncedKey {
			names = append(names, name) // removed, or no longer subscribed
		}
	}
	return names
}

// respond answers w if any of names differs from what its subscription holds (or if
// always); it reports whether it did. Called with mu held.
func (c *incCache) respond(w *incWatch, names []string, always bool) bool {
	sub := w.sub
	known := sub.ReturnedResources()
	subscribed := sub.SubscribedResources()
	var changed []*incEntry
	var changedNames, removed []string
	seen := make(map[string]struct{}, len(names))
	for _, name := range names {
		if _, dup := seen[name]; dup || name == syncedKey {
			continue
		}
		seen[name] = struct{}{}
		_, isSub := subscribed[name]
		want := sub.IsWildcard() || isSub
		e, exists := c.res[name]
		kv, isKnown := known[name]
		switch {
		case want && exists && (!isKnown || kv != e.version):
			changed = append(changed, e)
			changedNames = append(changedNames, name)
		case isKnown && (!exists || !want):
			removed = append(removed, name)
		}
	}
	isDelta := w.dreq != nil
	if len(changed) == 0 && (len(removed) == 0 || !isDelta) && !always {
		return false
	}
	// Always a copy: the server may drop a response it has not sent (a newer request of the
	// same type arrived), and the client's versions must then still be the ones it has. The
	// copy is one entry per resource of the type (one per upstream for endpoints), cheap next
	// to the work per changed resource.
	next := make(map[string]string, max(len(known), len(c.res))+1)
	maps.Copy(next, known)
	for i, e := range changed {
		next[changedNames[i]] = e.version
	}
	for _, name := range removed {
		delete(next, name)
	}
	next[syncedKey] = strconv.FormatUint(c.version, 10)
	version := c.prefix + strconv.FormatUint(c.version, 10)
	if isDelta {
		r := &incDeltaResponse{req: w.dreq, version: version, next: next, removed: removed}
		for i, e := range changed {
			r.res = append(r.res, &discoveryv3.Resource{Name: changedNames[i], Version: e.version, Resource: e.any})
		}
		w.dresp <- r
	} else {
		r := &incResponse{req: w.sreq, version: version, next: next}
		for _, e := range changed {
			r.res = append(r.res, e.any)
		}
		w.sresp <- r
	}
	return true
}

func (c *incCache) watch(w *incWatch, extra []string, always bool) func() {
	c.mu.Lock()
	defer c.mu.Unlock()
	names, ok := c.candidates(w.sub, extra)
	if !ok {
		names = c.all(w.sub)
	}
	if c.respond(w, names, always) {
		return func() {}
	}
	c.watches[w] = struct{}{}
	return func() {
		c.mu.Lock()
		delete(c.watches, w)
		c.mu.Unlock()
	}
}

// CreateWatch answers at once if the client lacks something, and otherwise at the next change it cares about.
func (c *incCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if req.GetTypeUrl() != c.typeURL {
		return nil, fmt.Errorf("xds: request type %s does not match cache type %s", req.GetTypeUrl(), c.typeURL)
	}
	// A first request, or one from another run of vigil, gets an answer even if empty.
	always := !strings.HasPrefix(req.GetVersionInfo(), c.prefix) || req.GetVersionInfo() == ""
	return c.watch(&incWatch{sub: sub, sreq: req, sresp: ch}, nil, always), nil
}

// CreateDeltaWatch is CreateWatch for incremental clients.
func (c *incCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	if req.GetTypeUrl() != c.typeURL {
		return nil, fmt.Errorf("xds: request type %s does not match cache type %s", req.GetTypeUrl(), c.typeURL)
	}
	extra := append(append([]string(nil), req.GetResourceNamesSubscribe()...), req.GetResourceNamesUnsubscribe()...)
	always := sub.IsWildcard() && req.GetResponseNonce() == ""
	return c.watch(&incWatch{sub: sub, dreq: req, dresp: ch}, extra, always), nil
}

// Fetch is not supported: vigil serves no REST xDS.
func (c *incCache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, errors.New("xds: fetch is not supported")
}

// incResponse is a state-of-the-world response of an incCache.
type incResponse struct {
	req     *cachev3.Request
	version string
	res     []*anypb.Any
	next    map[string]string
}

func (r *incResponse) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	return &discoveryv3.DiscoveryResponse{VersionInfo: r.version, Resources: r.res, TypeUrl: r.req.GetTypeUrl()}, nil
}
func (r *incResponse) GetRequest() *discoveryv3.DiscoveryRequest { return r.req }
func (r *incResponse) GetVersion() (string, error)               { return r.version, nil }
func (r *incResponse) GetResponseVersion() string                { return r.version }
func (r *incResponse) GetReturnedResources() map[string]string   { return r.next }
func (r *incResponse) GetContext() context.Context               { return context.Background() }

// incDeltaResponse is an incremental response of an incCache.
type incDeltaResponse struct {
	req     *cachev3.DeltaRequest
	version string
	res     []*discoveryv3.Resource
	removed []string
	next    map[string]string
}

func (r *incDeltaResponse) GetDeltaDiscoveryResponse() (*discoveryv3.DeltaDiscoveryResponse, error) {
	return &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: r.version, Resources: r.res,
		RemovedResources: r.removed, TypeUrl: r.req.GetTypeUrl()}, nil
}
func (r *incDeltaResponse) GetDeltaRequest() *discoveryv3.DeltaDiscoveryRequest { return r.req }
func (r *incDeltaResponse) GetSystemVersion() (string, error)                   { return r.version, nil }
func (r *incDeltaResponse) GetResponseVersion() string                          { return r.version }
func (r *incDeltaResponse) GetNextVersionMap() map[string]string                { return r.next }
func (r *incDeltaResponse) GetReturnedResources() map[string]string             { return r.next }
func (r *incDeltaResponse) GetContext() context.Context                         { return context.Background() }
