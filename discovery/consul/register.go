package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Status is what vigil's probe says of the local service.
type Status struct {
	// Probed is false until the probe's first verdict.
	Probed bool
	// Passing is the verdict; Reason says why not.
	Passing bool
	Reason  string
}

// StatusSource is where the Registration reads the local service's status: cmd/vigil adapts the
// table (the one health checker probes the local service like any instance) to it.
type StatusSource interface {
	// LocalStatus returns the local service's current status.
	LocalStatus() Status
	// Subscribe returns a channel that receives a value after each change (and maybe more
	// often), and a function that cancels.
	Subscribe() (<-chan struct{}, func())
}

// RegistrationOptions configures a Registration.
type RegistrationOptions struct {
	// Service is the local service to register; its Name must be set.
	Service Service
	// Client talks to the local agent (NewClient); required.
	Client *api.Client
	// Status tells the local service's probed status; nil: passing for as long as vigil runs.
	Status StatusSource
	// Metrics are shared with the Discovery (NewMetrics); nil: not exported.
	Metrics *Metrics
	// Logger receives log lines; nil discards them.
	Logger *slog.Logger
}

// Registration keeps the local service registered with the local Consul agent, with a TTL check
// that says what vigil's own probe of the service says. It only reads that verdict (Status).
type Registration struct {
	o       RegistrationOptions
	svc     Service
	id      string
	checkID string
	log     *slog.Logger
	m       *Metrics

	mu          sync.Mutex
	draining    bool               // set once by Drain; Run no longer writes after it
	cancelWrite context.CancelFunc // ends the write in flight, so that Drain need not wait for it
	maint       maintState         // the operator's maintenance (maint.go)

	// write is a 1-slot lock that serializes writes to the agent, so that a heartbeat cannot
	// undo a drain; a channel, so that Drain can stop waiting for it when its ctx ends.
	write chan struct{}
}

// NewRegistration returns a Registration for o.
func NewRegistration(o RegistrationOptions) (*Registration, error) {
	if o.Client == nil {
		return nil, errors.New("consul: registration needs a client")
	}
	if o.Service.Name == "" {
		return nil, errors.New("consul: registration needs a service name")
	}
	if err := o.Service.Validate(); err != nil {
		return nil, fmt.Errorf("consul: service: %w", err)
	}
	r := &Registration{o: o, svc: o.Service, log: o.Logger, m: o.Metrics, write: make(chan struct{}, 1)}
	r.id = r.svc.InstanceID()
	r.checkID = "vigil:" + r.id
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.m == nil {
		r.m = NewMetrics(nil)
	}
	return r, nil
}

// ID returns the registered service ID; CheckID the ID of its TTL check.
func (r *Registration) ID() string      { return r.id }
func (r *Registration) CheckID() string { return r.checkID }

// Run registers the service and updates its TTL check on each change of the status that
// o.Status tells and every heartbeat, registering again when the agent has lost it. It returns when ctx
// ends, leaving the registration in place (Drain removes it).
func (r *Registration) Run(ctx context.Context) error {
	var changed <-chan struct{}
	if r.o.Status != nil {
		ch, cancel := r.o.Status.Subscribe()
		defer cancel()
		changed = ch
	}
	var last Status // what was last written; a change event with the same status writes nothing
	heartbeat := time.NewTicker(r.svc.heartbeat())
	defer heartbeat.Stop()
	failures := 0
	var retry <-chan time.Time
	force := true // write even if the status is unchanged: first write, heartbeat, retry
	for {
		if cur := r.status(); force || cur != last {
			if err := r.update(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				failures++
				if failures == 1 {
					r.log.Warn("consul: cannot update the local service's check; retrying", "service", r.id, "err", err)
				}
				retry = time.After(backoff(time.Second, r.svc.heartbeat(), failures))
			} else {
				if failures > 0 {
					r.log.Info("consul: local service check updated again", "service", r.id, "failures", failures)
				}
				failures, retry, last = 0, nil, cur
			}
		}
		force = false
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-heartbeat.C:
			force = true
		case <-retry:
			force = true
		}
	}
}

// status returns the local service's status as the source tells it.
func (r *Registration) status() Status {
	if r.o.Status == nil {
		return Status{Probed: true, Passing: true}
	}
	return r.o.Status.LocalStatus()
}

// current returns what the TTL check should say now.
func (r *Registration) current() (status, output string) {
	s := r.status()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.draining:
		return api.HealthCritical, "vigil: draining"
	case !s.Probed:
		return api.HealthCritical, "vigil: not probed yet"
	case s.Passing:
		return api.HealthPassing, "vigil: healthy"
	default:
		return api.HealthCritical, "vigil: unhealthy: " + s.Reason
	}
}

// update writes the current status to the TTL check, registering the service first if the agent
// does not know it. After a drain it does nothing.
func (r *Registration) update(ctx context.Context) error {
	if !lock(ctx, r.write) {
		return ctx.Err()
	}
	defer func() { <-r.write }()
	ctx, ok := r.startWrite(ctx)
	if !ok {
		return nil
	}
	defer r.endWrite()
	status, output := r.current()
	err := r.o.Client.Agent().UpdateTTLOpts(r.checkID, output, status, (&api.QueryOptions{}).WithContext(ctx))
	if err == nil {
		r.setStatus(status)
		return r.writeMaint(ctx)
	}
	if r.isDraining() {
		return nil // the drain interrupted the write
	}
	if !notFound(err) {
		r.m.registered.Set(0)
		return fmt.Errorf("consul: update check %s: %w", r.checkID, err)
	}
	// The agent does not know the check: first start, or it lost its state (restarted).
	if err := r.register(ctx, status, output); err != nil {
		if r.isDraining() {
			return nil
		}
		return err
	}
	r.setStatus(status)
	r.mu.Lock()
	r.maint.dirty = r.maint.dirty || r.maint.on // the agent forgot it with the service
	r.mu.Unlock()
	return r.writeMaint(ctx)
}

// startWrite returns the context of a write to the agent, bounded by writeTimeout and ended by
// Drain; it reports false once draining (no more writes).
func (r *Registration) startWrite(ctx context.Context) (context.Context, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.draining {
		return ctx, false
	}
	ctx, r.cancelWrite = context.WithTimeout(ctx, r.writeTimeout())
	return ctx, true
}

func (r *Registration) endWrite() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cancelWrite()
	r.cancelWrite = nil
}

func (r *Registration) isDraining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining
}

// writeTimeout bounds one write (update and register) to the agent: a frozen agent must not hold
// the write lock much longer than a heartbeat (at least 1s, for a slow agent; at most callTimeout).
func (r *Registration) writeTimeout() time.Duration {
	return min(max(r.svc.heartbeat(), time.Second), callTimeout)
}

// lock takes the 1-slot lock l, or gives up when ctx ends.
func lock(ctx context.Context, l chan struct{}) bool {
	select {
	case l <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *Registration) setStatus(status string) {
	r.m.registered.Set(1)
	r.m.setStatus(status)
}

func (r *Registration) register(ctx context.Context, status, output string) error {
	reg := &api.AgentServiceRegistration{
		ID:      r.id,
		Name:    r.svc.Name,
		Address: r.svc.Address,
		Port:    r.svc.Port,
		Tags:    r.svc.Tags,
		Meta:    r.svc.Meta,
		Check: &api.AgentServiceCheck{
			CheckID: r.checkID,
			Name:    "vigil probe of " + r.svc.Name,
			TTL:     r.svc.TTL.String(),
			Status:  status,
			Notes:   output,
		},
	}
	if r.svc.DeregisterCriticalAfter > 0 {
		reg.Check.DeregisterCriticalServiceAfter = r.svc.DeregisterCriticalAfter.String()
	}
	err := r.o.Client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx))
	if err != nil {
		r.m.registered.Set(0)
		return fmt.Errorf("consul: register %s: %w", r.id, err)
	}
	r.m.registers.Inc()
	r.log.Info("consul: registered the local service", "service", r.svc.Name, "id", r.id, "status", status)
	// The registration's Status sets the check; the output is written by a first update.
	if err := r.o.Client.Agent().UpdateTTLOpts(r.checkID, output, status, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: update check %s: %w", r.checkID, err)
	}
	return nil
}

// Drain takes the local service out of service: it marks the TTL check critical, waits the drain
// period (or until ctx ends) so that clients watching Consul stop sending to it, and deregisters it.
// cmd/vigil calls it on SIGTERM before it cancels everything else; Run no longer writes after it.
func (r *Registration) Drain(ctx context.Context) error {
	r.mu.Lock()
	r.draining = true
	if r.cancelWrite != nil {
		r.cancelWrite() // a heartbeat to a frozen agent must not hold up the drain
	}
	r.mu.Unlock()
	err := r.markDraining(ctx)
	switch {
	case err == nil:
		r.m.setStatus(api.HealthCritical)
	case notFound(err):
		err = nil // not registered: nothing to drain
	default:
		r.log.Warn("consul: drain: cannot mark the local service critical", "err", err)
	}
	r.log.Info("consul: draining the local service", "id", r.id, "for", r.svc.Drain)
	sleep(ctx, r.svc.Drain)
	// Deregister even if ctx ended: a shutdown deadline must not leave the service behind.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	derr := r.o.Client.Agent().ServiceDeregisterOpts(r.id, (&api.QueryOptions{}).WithContext(dctx))
	if derr != nil && !notFound(derr) {
		return errors.Join(err, fmt.Errorf("consul: deregister %s: %w", r.id, derr))
	}
	r.m.registered.Set(0)
	r.log.Info("consul: deregistered the local service", "id", r.id)
	if err != nil {
		return fmt.Errorf("consul: drain %s: %w", r.id, err)
	}
	return nil
}

// markDraining sets the TTL check critical, after any write in flight.
func (r *Registration) markDraining(ctx context.Context) error {
	if !lock(ctx, r.write) {
		return ctx.Err()
	}
	defer func() { <-r.write }()
	wctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return r.o.Client.Agent().UpdateTTLOpts(r.checkID, "vigil: draining", api.HealthCritical, (&api.QueryOptions{}).WithContext(wctx))
}

// notFound reports whether err is the agent saying it does not know the check or service.
func notFound(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}
