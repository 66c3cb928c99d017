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

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// Checker probes; *health.Checker is one.
type Checker interface {
	Run(ctx context.Context) error
}

// RegistrationOptions configures a Registration.
type RegistrationOptions struct {
	// Service is the local service to register; its Name must be set.
	Service Service
	// Client talks to the local agent (NewClient); required.
	Client *api.Client
	// NewChecker builds the prober of the local service: check is Service.Check, members a
	// one-instance membership, sink the Registration. cmd/vigil passes a function that returns
	// health.NewChecker(health.Options{Default: check, Members: members, Sink: sink, Logger: ...}).
	// Nil: no probe, the service is passing for as long as vigil runs.
	NewChecker func(check health.CheckConfig, members <-chan discovery.Membership, sink health.Sink) (Checker, error)
	// Metrics are shared with the Discovery (NewMetrics); nil: not exported.
	Metrics *Metrics
	// Logger receives log lines; nil discards them.
	Logger *slog.Logger
}

// Registration keeps the local service registered with the local Consul agent, with a TTL check
// that says what vigil's own probe of the service says. It is the health.Sink of that probe.
type Registration struct {
	o       RegistrationOptions
	svc     Service
	id      string
	checkID string
	key     discovery.Key
	log     *slog.Logger
	m       *Metrics
	changed chan struct{}

	mu     sync.Mutex
	status health.Status // the probe's latest verdict
	probed bool          // false until the first verdict (or always with no checker)

	draining    bool               // set once by Drain; Run no longer writes after it
	cancelWrite context.CancelFunc // ends the write in flight, so that Drain need not wait for it

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
	r := &Registration{o: o, svc: o.Service, log: o.Logger, m: o.Metrics, changed: make(chan struct{}, 1), write: make(chan struct{}, 1)}
	r.id = r.svc.id()
	r.checkID = "vigil:" + r.id
	r.key = discovery.Key{Upstream: r.svc.Name, ID: r.id}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.m == nil {
		r.m = NewMetrics(nil)
	}
	if o.NewChecker == nil {
		r.status, r.probed = health.Status{State: health.Healthy, Since: time.Now()}, true
	}
	return r, nil
}

// ID returns the registered service ID; CheckID the ID of its TTL check.
func (r *Registration) ID() string      { return r.id }
func (r *Registration) CheckID() string { return r.checkID }

// SetMembership implements health.Sink.
func (r *Registration) SetMembership(_ discovery.Membership, statuses map[discovery.Key]health.Status) {
	if s, ok := statuses[r.key]; ok {
		r.SetStatus(r.key, s)
	}
}

// SetStatus implements health.Sink.
func (r *Registration) SetStatus(k discovery.Key, s health.Status) {
	if k != r.key {
		return
	}
	r.mu.Lock()
	prev, probed := r.status, r.probed
	r.status, r.probed = s, s.State != health.Unknown
	r.mu.Unlock()
	if probed && prev.State == s.State && prev.Reason == s.Reason {
		return
	}
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

var _ health.Sink = (*Registration)(nil)

// Run registers the service, probes it, and updates its TTL check on each change of the probe's
// verdict and every heartbeat, registering again when the agent has lost it. It returns when ctx
// ends, leaving the registration in place (Drain removes it).
func (r *Registration) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	if r.o.NewChecker != nil {
		addr := r.svc.Address
		if addr == "" {
			addr = "127.0.0.1"
		}
		members := make(chan discovery.Membership, 1)
		members <- discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
			r.svc.Name: {Name: r.svc.Name, Instances: []discovery.Instance{{ID: r.id, Address: addr, Port: r.svc.Port, Weight: 1}}},
		}}
		c, err := r.o.NewChecker(r.svc.Check, members, r)
		if err != nil {
			return fmt.Errorf("consul: registration: checker: %w", err)
		}
		wg.Go(func() {
			if err := c.Run(ctx); err != nil && ctx.Err() == nil {
				r.log.Error("consul: local service checker stopped", "err", err)
			}
		})
	}

	heartbeat := time.NewTicker(r.svc.heartbeat())
	defer heartbeat.Stop()
	failures := 0
	var retry <-chan time.Time
	for {
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
			failures, retry = 0, nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.changed:
		case <-heartbeat.C:
		case <-retry:
		}
	}
}

// status returns what the TTL check should say now.
func (r *Registration) current() (status, output string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.draining:
		return api.HealthCritical, "vigil: draining"
	case !r.probed:
		return api.HealthCritical, "vigil: not probed yet"
	case r.status.State == health.Healthy:
		return api.HealthPassing, "vigil: healthy"
	default:
		return api.HealthCritical, "vigil: unhealthy: " + r.status.Reason
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
		return nil
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
	return nil
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
