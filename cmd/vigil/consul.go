package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// consulParts are the Consul discovery and the local service's registration; nil when Consul is off.
type consulParts struct {
	disc  *consul.Discovery
	table *table.Table
	reg   *consul.Registration // nil without service.name
	log   *slog.Logger
	// drainFor is service.drain at start (the registration is not reloaded).
	drainFor time.Duration
}

// newConsul builds the Consul parts and registers the discovery in m under "consul".
// With service.name, the local service is one more source of m, probed by the one checker; the
// registration follows its status in t.
func newConsul(cfg *configs.Config, m *discovery.Manager, t *table.Table, reg prometheus.Registerer, log *slog.Logger) (*consulParts, error) {
	if !cfg.Consul.Enabled {
		return nil, nil
	}
	if err := cfg.Consul.ReadToken(); err != nil {
		return nil, err
	}
	metrics := consul.NewMetrics(reg)
	client, err := consul.NewClient(cfg.Consul, metrics)
	if err != nil {
		return nil, err
	}
	c := &consulParts{table: t, log: log, drainFor: cfg.Service.Drain}
	c.disc, err = consul.NewDiscovery(consul.Options{
		Config: cfg.Consul, Upstreams: cfg.ConsulUpstreams(), Client: client, Metrics: metrics, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	m.Register("consul", c.disc)
	if cfg.Service.Name != "" {
		m.Register("local", newLocalSource(&cfg.Service))
		c.reg, err = consul.NewRegistration(consul.RegistrationOptions{
			Service: cfg.Service.Service, Client: client, Metrics: metrics, Logger: log,
			Status: &localStatus{t: t, upstream: localUpstream(cfg.Service.Name), id: cfg.Service.InstanceID()},
		})
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
	}
	return c, nil
}

// start runs the parts that the Manager does not run.
func (c *consulParts) start(ctx context.Context, g *errgroup.Group) {
	if c == nil {
		return
	}
	g.Go(func() error { return c.disc.TrackTable(ctx, trackedTable{c.table}) })
	if c.reg != nil {
		g.Go(func() error { return c.reg.Run(ctx) })
	}
}

// apply switches the watched upstreams on a reload (connection settings and service: need a restart).
func (c *consulParts) apply(cfg *configs.Config) {
	if c == nil {
		return
	}
	c.disc.Set(cfg.ConsulUpstreams())
}

// drain takes the local service out of Consul before vigil stops: critical, the drain period, deregistered.
// Everything else keeps serving meanwhile. Failures are logged: shutdown goes on.
func (c *consulParts) drain() {
	if c == nil || c.reg == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.drainFor+10*time.Second)
	defer cancel()
	if err := c.reg.Drain(ctx); err != nil {
		c.log.Error("vigil: drain", "err", err)
	}
}
