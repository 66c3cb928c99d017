package consul

import (
	"context"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// maintState is the operator's maintenance of the local service, as Consul's own maintenance
// mode; guarded by Registration.mu.
type maintState struct {
	on     bool
	reason string
	dirty  bool // not yet written to the agent
}

// Maintenance records whether the local service is in Consul's maintenance mode, with reason,
// for the next write to the agent (at start: after the first registration or check update).
func (r *Registration) Maintenance(on bool, reason string) {
	r.mu.Lock()
	r.maint = maintState{on: on, reason: reason, dirty: true}
	r.mu.Unlock()
}

// SetMaintenance puts the local service into Consul's maintenance mode (on) or takes it out, now
// if the agent knows the service, and again after each registration (the agent forgets it with
// the service). A service not registered yet gets it at registration.
func (r *Registration) SetMaintenance(ctx context.Context, on bool, reason string) error {
	r.Maintenance(on, reason)
	if !lock(ctx, r.write) {
		return ctx.Err()
	}
	defer func() { <-r.write }()
	return r.writeMaint(ctx)
}

// writeMaint writes the maintenance state if it changed; called with the write lock held.
func (r *Registration) writeMaint(ctx context.Context) error {
	r.mu.Lock()
	m := r.maint
	if r.draining || !m.dirty {
		r.mu.Unlock()
		return nil
	}
	r.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(wctx)
	var err error
	if m.on {
		err = r.o.Client.Agent().EnableServiceMaintenanceOpts(r.id, m.reason, q)
	} else {
		err = r.o.Client.Agent().DisableServiceMaintenanceOpts(r.id, q)
	}
	if notFound(err) {
		return nil // not registered: the registration writes it
	}
	if err != nil {
		return fmt.Errorf("consul: maintenance of %s: %w", r.id, err)
	}
	r.mu.Lock()
	if r.maint.on == m.on && r.maint.reason == m.reason {
		r.maint.dirty = false
	}
	r.mu.Unlock()
	r.log.Info("consul: local service maintenance", "id", r.id, "on", m.on, "reason", m.reason)
	return nil
}
