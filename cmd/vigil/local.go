package main

import (
	"context"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// localUpstream returns the reserved upstream name of the local service named name
// (table.LocalPrefix): the table holds its status; DNS and xDS do not serve it.
func localUpstream(name string) string { return table.LocalUpstream(name) }

// localSource is the discovery source of the local service: one instance, one group, so that
// the one health checker probes it like any instance and the table holds its status.
type localSource struct{ g discovery.Group }

func newLocalSource(svc *configs.Service) *localSource {
	addr := svc.Address
	if addr == "" {
		addr = "127.0.0.1"
	}
	return &localSource{g: discovery.Group{
		Source:   "local",
		Upstream: localUpstream(svc.Name),
		Instances: []discovery.Instance{{
			ID: svc.InstanceID(), Address: addr, Port: svc.Port, Weight: 1, Tags: svc.Tags, Meta: svc.Meta,
		}},
	}}
}

// Run implements discovery.Discoverer: it sends the local service once.
func (l *localSource) Run(ctx context.Context, up chan<- []discovery.Group) {
	select {
	case up <- []discovery.Group{l.g}:
	case <-ctx.Done():
	}
	<-ctx.Done()
}

var _ discovery.Discoverer = (*localSource)(nil)

// localStatus tells the Consul registration what the table says of the local service.
type localStatus struct {
	t        *table.Table
	upstream string
	id       string
}

// LocalStatus implements consul.StatusSource.
func (l *localStatus) LocalStatus() consul.Status {
	u := l.t.Snapshot().Lookup(l.upstream)
	if u == nil {
		return consul.Status{}
	}
	for i := range u.Instances {
		in := &u.Instances[i]
		if in.ID != l.id {
			continue
		}
		switch in.State {
		case table.Unknown:
			return consul.Status{}
		case table.Healthy:
			return consul.Status{Probed: true, Passing: true}
		default:
			return consul.Status{Probed: true, Reason: in.Reason}
		}
	}
	return consul.Status{}
}

// Subscribe implements consul.StatusSource.
func (l *localStatus) Subscribe() (<-chan struct{}, func()) { return l.t.Subscribe() }

var _ consul.StatusSource = (*localStatus)(nil)

// trackedTable adapts the table to what the Consul discovery's change-to-table tracking reads.
type trackedTable struct{ t *table.Table }

func (t trackedTable) View() consul.TableView               { return t.t.Snapshot() }
func (t trackedTable) Subscribe() (<-chan struct{}, func()) { return t.t.Subscribe() }

var _ consul.Table = trackedTable{}

// checks returns the health check of each upstream and of the local service.
func checks(cfg *configs.Config) map[string]health.CheckConfig {
	m := cfg.Checks()
	if cfg.Service.Name != "" {
		m[localUpstream(cfg.Service.Name)] = cfg.Service.Check
	}
	return m
}
