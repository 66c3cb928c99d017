// Package xds serves vigil's upstreams to Envoy and other xDS clients, with each endpoint's health.
package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	cplog "github.com/envoyproxy/go-control-plane/pkg/log"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/vigil-sidecar/vigil/internal/tlsutil"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// Server is vigil's xDS control plane: ADS and the separate CDS, EDS, LDS and RDS services,
// state-of-the-world and delta, fed from the table's snapshots.
type Server struct {
	table Table
	log   *slog.Logger
	m     *metrics
	creds credentials.TransportCredentials // nil: plaintext
	epoch uint64

	cfg    atomic.Pointer[Config]
	reload chan struct{} // SetConfig's signal to the push loop

	caches [nKinds]resourceCache
	cache  cachev3.Cache

	// pushed is what the caches hold, by upstream; owned by the push loop.
	pushed map[string]*pushedSet

	streams sync.Map // "sotw/<id>" or "delta/<id>" -> streams label values
	acks    sync.Map // "sotw/<id>" or "delta/<id>" -> *ackState

	// change is the newest health state change a push carried (see ack.go); markedSeq, its
	// Seq, is owned by the push loop.
	change    atomic.Pointer[changeMark]
	markedSeq uint64
	addr      atomic.Pointer[net.TCPAddr]
}

// resourceCache is a cache of one resource type that the push loop updates.
type resourceCache interface {
	cachev3.Cache
	UpdateResources(toUpdate map[string]types.Resource, toDelete []string) error
}

// Resource kinds, one cache each: endpoints in an incCache, the rest (which change
// rarely, and whose state-of-the-world responses carry every resource) in LinearCaches.
const (
	kindCluster = iota
	kindEndpoint
	kindRoute
	kindListener    // socket listeners, for Envoy
	kindAPIListener // API listeners, for proxyless gRPC clients
	nKinds
)

var kindTypeURL = [nKinds]string{
	resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType, resourcev3.ListenerType, resourcev3.ListenerType,
}

// pushedSet is what one upstream (or the inbound service) put into the caches.
type pushedSet struct {
	version uint64
	cfg     *Config
	res     *Resources
}

// Table is what the xDS server reads of the endpoint table (*table.Table): the current snapshot,
// and a signal after each new one.
type Table interface {
	Snapshot() *table.Snapshot
	Subscribe() (<-chan struct{}, func())
}

// New returns a server for the table's snapshots. cfg must be valid; the TLS files are
// read now, and the version epoch is taken (and saved to cfg.VersionFile).
func New(cfg Config, t Table, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{table: t, log: log, m: m, reload: make(chan struct{}, 1), pushed: map[string]*pushedSet{}}
	if cfg.TLS.Enabled() {
		if s.creds, err = serverCreds(&cfg.TLS); err != nil {
			return nil, err
		}
	}
	if s.epoch, err = nextEpoch(cfg.VersionFile, time.Now()); err != nil {
		return nil, err
	}
	m.version.Set(float64(s.epoch))
	s.cfg.Store(&cfg)
	cl := cplog.LoggerFuncs{
		WarnFunc:  func(f string, a ...any) { log.Warn("xds: cache: " + fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { log.Error("xds: cache: " + fmt.Sprintf(f, a...)) },
	}
	prefix := strconv.FormatUint(s.epoch, 10) + "."
	for k := range s.caches {
		if k == kindEndpoint {
			s.caches[k] = newIncCache(kindTypeURL[k], prefix)
			continue
		}
		s.caches[k] = cachev3.NewLinearCache(kindTypeURL[k], cachev3.WithVersionPrefix(prefix), cachev3.WithLogger(cl))
	}
	caches := map[string]cachev3.Cache{}
	for k, c := range s.caches {
		caches[strconv.Itoa(k)] = c
	}
	s.cache = &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return classify(r.GetTypeUrl(), r.GetNode().GetUserAgentName()) },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return classify(r.GetTypeUrl(), r.GetNode().GetUserAgentName()) },
		Caches:        caches,
	}
	return s, nil
}

// classify picks the cache of a request. Listeners come in two sets: proxyless gRPC
// clients (user agent "gRPC Go", "gRPC Java", ...) get API listeners named after each
// upstream, every other client (Envoy) gets socket listeners.
func classify(typeURL, userAgent string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return strconv.Itoa(kindCluster)
	case resourcev3.EndpointType:
		return strconv.Itoa(kindEndpoint)
	case resourcev3.RouteType:
		return strconv.Itoa(kindRoute)
	case resourcev3.ListenerType:
		if strings.HasPrefix(userAgent, "gRPC") {
			return strconv.Itoa(kindAPIListener)
		}
		return strconv.Itoa(kindListener)
	}
	return typeURL // no such cache: the request fails
}

func serverCreds(c *TLS) (credentials.TransportCredentials, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("xds: tls: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCAFile != "" {
		pool, err := tlsutil.LoadCAPool(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("xds: tls: client ca: %w", err)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(tc), nil
}

// Addr returns the address the server listens on, or nil before Run listens.
func (s *Server) Addr() *net.TCPAddr { return s.addr.Load() }

// Epoch returns this run's version epoch: every version served is "<epoch>.<n>".
func (s *Server) Epoch() uint64 { return s.epoch }

// SetConfig replaces the per-upstream settings and the inbound service (on reload);
// the listen address and TLS take effect at the next start.
func (s *Server) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	s.cfg.Store(&cfg)
	select {
	case s.reload <- struct{}{}:
	default:
	}
	return nil
}

// Run serves xDS on cfg.Listen until ctx ends. It pushes the current snapshot before it
// accepts clients, then every table change, coalesced.
func (s *Server) Run(ctx context.Context) error {
	cfg := s.cfg.Load()
	if cfg.Listen == "" {
		<-ctx.Done()
		return nil
	}
	// Subscribe before the first push: no change may fall between them.
	changes, unsubscribe := s.table.Subscribe()
	defer unsubscribe()
	pushed := s.push(time.Time{})
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("xds: listen %s: %w", cfg.Listen, err)
	}
	lis = s.limitListener(lis, cfg.Limits.MaxConnections)
	opts := s.serverOptions(cfg.Limits)
	if s.creds != nil {
		opts = append(opts, grpc.Creds(s.creds))
	}
	gs := grpc.NewServer(opts...)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	xs := serverv3.NewServer(ctx, s.cache, s.callbacks())
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, xs)

	s.addr.Store(lis.Addr().(*net.TCPAddr))
	s.log.Info("xds: serving", "listen", lis.Addr().String(), "tls", s.creds != nil, "epoch", s.epoch)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("xds: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		gs.Stop()
		return nil
	})
	g.Go(func() error { s.loop(gctx, changes, pushed); return nil })
	err = g.Wait()
	if ctx.Err() != nil && err == nil {
		return nil
	}
	return err
}

// loop coalesces table changes: a push waits cfg.Coalesce after the last change, and at
// most cfg.MaxDelay after the first.
func (s *Server) loop(ctx context.Context, ch <-chan struct{}, pushed bool) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	if !pushed { // the first push failed: try again
		timer.Reset(retryDelay(s.cfg.Load()))
	}
	defer timer.Stop()
	var first time.Time // of the changes not pushed yet
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.reload:
			if !s.push(time.Time{}) {
				timer.Reset(retryDelay(s.cfg.Load()))
			}
			continue
		case <-ch:
		case <-timer.C:
			if !s.push(first) { // retried until the caches take it
				timer.Reset(retryDelay(s.cfg.Load()))
				continue
			}
			first = time.Time{}
			continue
		}
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		cfg := s.cfg.Load()
		wait := min(cfg.Coalesce, first.Add(cfg.MaxDelay).Sub(now))
		if wait <= 0 {
			timer.Stop()
			if !s.push(first) {
				timer.Reset(retryDelay(cfg))
				continue
			}
			first = time.Time{}
			continue
		}
		timer.Reset(wait)
	}
}

// retryDelay is how long a push whose cache update failed waits before it is tried again.
func retryDelay(cfg *Config) time.Duration { return max(cfg.Coalesce, 100*time.Millisecond) }

// push brings the caches up to date with the current snapshot: only the resources
// of upstreams whose version changed are rebuilt, and only those that differ are sent.
// What was pushed is recorded only once every cache update has succeeded: after a failure
// it reports false, and the next push diffs against what the caches surely hold.
func (s *Server) push(since time.Time) bool {
	snap := s.table.Snapshot()
	cfg := s.cfg.Load()
	var upd [nKinds]map[string]types.Resource
	var del [nKinds][]string
	for k := range upd {
		upd[k] = map[string]types.Resource{}
	}
	staged := map[string]*pushedSet{} // nil: removed
	apply := func(key string, version uint64, build func() *Resources) {
		old := s.pushed[key]
		if old != nil && old.version == version && old.cfg == cfg {
			return
		}
		var prev *Resources
		if old != nil {
			prev = old.res
		}
		next := build()
		diff(prev, next, &upd, &del)
		staged[key] = &pushedSet{version: version, cfg: cfg, res: next}
	}
	for _, name := range snap.Names {
		if u := snap.Upstreams[name]; u != nil && !u.Local {
			apply(name, u.Version, func() *Resources { return TranslateUpstream(u, cfg) })
		}
	}
	const inbound = "\x00inbound" // not an upstream name
	if cfg.Inbound.Name != "" {
		apply(inbound, 0, func() *Resources { return translateInbound(&cfg.Inbound) })
	}
	for key, old := range s.pushed {
		if u, ok := snap.Upstreams[key]; (!ok || u.Local) && (key != inbound || cfg.Inbound.Name == "") {
			diff(old.res, nil, &upd, &del)
			staged[key] = nil
		}
	}
	for k := range upd {
		if len(upd[k])+len(del[k]) > 0 {
			s.markChange(snap.Change) // before the caches send the responses that carry it
			break
		}
	}
	// Make before break: clusters, then endpoints, then the listeners and routes that use
	// them; removals the other way round.
	changed := 0
	for k, c := range s.caches {
		if len(upd[k]) > 0 {
			changed += len(upd[k])
			if err := c.UpdateResources(upd[k], nil); err != nil {
				s.log.Error("xds: update cache", "type", kindTypeURL[k], "err", err)
				return false
			}
		}
	}
	for k := nKinds - 1; k >= 0; k-- {
		if len(del[k]) > 0 {
			changed += len(del[k])
			if err := s.caches[k].UpdateResources(nil, del[k]); err != nil {
				s.log.Error("xds: update cache", "type", kindTypeURL[k], "err", err)
				return false
			}
		}
	}
	for key, ps := range staged {
		if ps == nil {
			delete(s.pushed, key)
		} else {
			s.pushed[key] = ps
		}
	}
	s.m.upstreams.Set(float64(len(snap.Upstreams)))
	if changed == 0 {
		return true
	}
	s.m.pushes.Inc()
	if !since.IsZero() {
		s.m.latency.Observe(time.Since(since).Seconds())
	}
	s.log.Debug("xds: pushed", "table_version", snap.Version, "resources", changed)
	return true
}
