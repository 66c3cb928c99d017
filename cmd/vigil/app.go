package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/static"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/forward"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/share"
	"github.com/vigil-sidecar/vigil/proxy/table"
	"github.com/vigil-sidecar/vigil/xds"
)

// app is one running vigil: every part wired together.
type app struct {
	cfg     *configs.Config
	log     *slog.Logger
	reg     *prometheus.Registry
	table   *table.Table
	static  *static.Discovery
	manager *discovery.Manager
	checker *health.Checker
	admin   *admin.Server
	consul  *consulParts // nil when consul is off
	xds     *xds.Server
	dns     *dns.Server // nil when dns.listen is ""
	ctl     *control    // the admin API's runtime control (control.go)
	forward *forward.Forwarder
	share   *share.Node // nil when share.enabled is false

	demo   bool                            // serve demo instances too
	reload func() (*configs.Config, error) // reads the configuration again on SIGHUP
	hup    <-chan os.Signal
	// reloadMu serializes reloads (SIGHUP, POST /v1/reload).
	reloadMu sync.Mutex
	// onAdmin, if set, receives the admin server's bound address.
	onAdmin func(net.Addr)
}

func newApp(cfg *configs.Config, log *slog.Logger) (*app, error) {
	if cfg.Node.Name == "" {
		cfg.Node.Name, _ = os.Hostname()
	}
	a := &app{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.table = table.New(cfg.TableConfig())
	if err := a.table.Register(a.reg); err != nil {
		return nil, fmt.Errorf("table metrics: %w", err)
	}
	a.manager = discovery.NewManager(discovery.ManagerOptions{
		StateFile: cfg.Discovery.StateFile, MaxStateAge: cfg.Discovery.MaxStateAge, Logger: log,
	})
	a.static = static.New(cfg.StaticUpstreams())
	a.manager.Register("static", a.static)
	var err error
	if a.consul, err = newConsul(cfg, a.manager, a.table, a.reg, log); err != nil {
		return nil, err
	}
	a.checker, err = health.NewChecker(health.Options{
		Default:    cfg.Defaults.Check,
		Checks:     checks(cfg),
		Sink:       a.table,
		Members:    a.manager.SyncCh(),
		Registerer: a.reg,
		Logger:     log,
	})
	if err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	if cfg.Share.Enabled {
		// Upstreams added by a reload are not shared until the next start: probed by every vigil.
		if a.share, err = share.New(share.Options{Config: cfg.Share, Name: cfg.Node.Name, Datacenter: cfg.Node.Datacenter,
			Zone: cfg.Node.Zone, Upstreams: cfg.SharedUpstreams(), Checker: a.checker, Registerer: a.reg,
			Logger: log.With("part", "share")}); err != nil {
			return nil, err
		}
	}
	a.admin = admin.New(cfg.Admin, a.table, a.reg, log)
	if err := a.setupControl(); err != nil {
		return nil, err
	}
	if cfg.DNS.Listen != "" {
		if a.dns, err = dns.New(cfg.DNSConfig(), a.table, a.reg, log.With("part", "dns")); err != nil {
			return nil, err
		}
	}
	if a.xds, err = xds.New(cfg.XDSConfig(), a.table, a.reg, log.With("part", "xds")); err != nil {
		return nil, err
	}
	// Always built, so that a reload can add the first forward block; with none it only waits.
	if a.forward, err = forward.New(forward.Options{Upstreams: forwards(cfg), Source: a.table, Reporter: a.checker,
		Registerer: a.reg, Logger: log.With("part", "forward")}); err != nil {
		return nil, err
	}
	return a, nil
}

// Run runs every part until ctx ends; the first part to fail stops the others.
func (a *app) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	if a.demo {
		d := newDemo(a.cfg, a.log)
		if err := d.listen(); err != nil {
			return err
		}
		g.Go(func() error { return d.Run(ctx) })
	}
	a.admin.OnListen = a.onAdmin
	g.Go(func() error { return a.manager.Run(ctx) })
	g.Go(func() error { return a.checker.Run(ctx) })
	if a.share != nil {
		g.Go(func() error { return a.share.Run(ctx) })
	}
	g.Go(func() error { return a.admin.Run(ctx) })
	g.Go(func() error { return a.xds.Run(ctx) })
	if a.dns != nil {
		g.Go(func() error { return a.dns.Run(ctx) })
	}
	// On SIGTERM the forwarder stops accepting and its open connections get their drain.
	g.Go(func() error { return a.forward.Run(ctx) })
	a.consul.start(ctx, g)
	g.Go(func() error { a.watchReload(ctx); return nil })
	return g.Wait()
}

// watchReload applies a new configuration on each SIGHUP; a bad one is logged and the old kept.
func (a *app) watchReload(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.hup:
		}
		if _, err := a.reloadConfig(); err != nil {
			a.log.Error("vigil: reload refused, keeping the running configuration", "err", err)
		}
	}
}

// apply switches the running parts to cfg (listen addresses and logging need a restart); it
// returns the changed settings that it kept as running.
func (a *app) apply(cfg *configs.Config) []string {
	cfg.Node.Name = a.cfg.Node.Name
	fields := keepRestartOnly(a.cfg, cfg)
	if len(fields) > 0 {
		a.log.Warn("vigil: reload: changed settings take effect only at the next start; running with the old ones", "settings", fields)
	}
	a.table.SetConfig(cfg.TableConfig())
	a.checker.SetChecks(cfg.Defaults.Check, checks(cfg))
	if a.dns != nil {
		d := cfg.DNSConfig()
		a.dns.SetTTLs(d.TTL, d.TTLs)
	}
	a.static.Set(cfg.StaticUpstreams())
	if err := a.xds.SetConfig(cfg.XDSConfig()); err != nil {
		a.log.Error("vigil: reload: xds", "err", err)
	}
	if err := a.forward.SetUpstreams(forwards(cfg)); err != nil {
		a.log.Warn("vigil: reload: a forward listener could not be opened; that upstream keeps its previous listener, if any", "err", err)
	}
	a.consul.apply(cfg)
	a.cfg = cfg
	a.log.Info("vigil: configuration reloaded", "upstreams", len(cfg.Upstreams))
	return fields
}

// forwards returns the forwarded upstreams. The local service ("local:NAME") is never one: its
// name cannot be an upstream's, and it is skipped here too.
func forwards(cfg *configs.Config) map[string]forward.Config {
	m := cfg.Forwards()
	for name := range m {
		if strings.HasPrefix(name, table.LocalPrefix) {
			delete(m, name)
		}
	}
	return m
}

// drain takes the local service out of Consul (when registered) before the parts stop.
func (a *app) drain() { a.consul.drain() }
