// Package forward is vigil's own L4 data path: a TCP listener per upstream that sends each connection to an instance the table serves.
package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// Source is where the forwarder reads which instances are served: the table.
type Source interface {
	Snapshot() *table.Snapshot
	Subscribe() (<-chan struct{}, func())
}

// Reporter receives the connect failures the forwarder sees (health.Checker). It counts one as
// a failed probe of k unless that would make more than maxEjectionPercent of the upstream's
// instances unhealthy, and reports whether the failure made k unhealthy.
type Reporter interface {
	ReportPassive(k discovery.Key, err error, maxEjectionPercent float64) bool
}

// Options configure a Forwarder.
type Options struct {
	// Upstreams are the forwarded upstreams, by name.
	Upstreams map[string]Config
	Source    Source
	// Reporter, if set, receives connect failures as passive health signals.
	Reporter   Reporter
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Listeners, if set, are used instead of listening on each Config.Listen.
	Listeners map[string]net.Listener
}

// Forwarder runs one listener per forwarded upstream; SetUpstreams changes them while it runs.
type Forwarder struct {
	src Source
	rep Reporter
	log *slog.Logger
	met *metrics

	conns     sync.WaitGroup // connection handlers
	accepting sync.WaitGroup // accept loops

	mu       sync.Mutex
	ls       map[string]*listener       // by upstream; guarded by mu
	retired  []*listener                // removed or replaced, draining; guarded by mu
	running  bool                       // Run started the accept loops; guarded by mu
	stopped  bool                       // Run is shutting down; guarded by mu
	backends map[discovery.Key]*backend // instances with open or reserved connections
}

// backend is one instance as the forwarder sees it.
type backend struct {
	key    discovery.Key
	l      *listener
	active int // open and connecting; guarded by Forwarder.mu
	// guarded by Forwarder.mu
	sessions map[*session]struct{}
	drain    *time.Timer // running while the instance is out of the served set
	gone     bool        // drain ended: connections to it are closed at once
}

// New returns a Forwarder listening on every configured address; Run serves them.
func New(o Options) (*Forwarder, error) {
	if o.Source == nil {
		return nil, errors.New("forward: options: source is required")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Forwarder{src: o.Source, rep: o.Reporter, log: log, met: newMetrics(o.Registerer),
		ls: map[string]*listener{}, backends: map[discovery.Key]*backend{}}
	for name, cfg := range o.Upstreams {
		l, err := f.newListener(name, cfg, o.Listeners[name])
		if err != nil {
			f.closeListeners()
			return nil, err
		}
		f.ls[name] = l
	}
	return f, nil
}

// newListener listens for upstream name on cfg.Listen, or takes ln.
func (f *Forwarder) newListener(name string, cfg Config, ln net.Listener) (*listener, error) {
	cfg = cfg.WithDefaults()
	if ln == nil {
		var err error
		lc := net.ListenConfig{KeepAlive: cfg.KeepAlive}
		if ln, err = lc.Listen(context.Background(), "tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("forward: upstreams[%s]: listen %s: %w", name, cfg.Listen, err)
		}
	}
	l := &listener{f: f, name: name, ln: ln, sessions: map[*session]struct{}{}}
	l.cfg.Store(&cfg)
	return l, nil
}

// Addr returns the address the named upstream's listener is bound to, or nil.
func (f *Forwarder) Addr(upstream string) net.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.ls[upstream]; l != nil {
		return l.ln.Addr()
	}
	return nil
}

func (f *Forwarder) closeListeners() {
	for _, l := range f.ls {
		l.ln.Close()
	}
}

// SetUpstreams applies a new set of forwarded upstreams: a new upstream gets a listener, a
// removed one stops accepting and its connections drain; one whose listen address changed gets
// a listener on the new address and the old one drains; the other settings apply to new
// connections (and to the idle timeout of open ones). A listener that cannot be opened is an
// error, and the upstream keeps its old listener if it had one.
func (f *Forwarder) SetUpstreams(ups map[string]Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return errors.New("forward: set upstreams: forwarder stopped")
	}
	for name, l := range f.ls {
		if _, ok := ups[name]; !ok {
			f.log.Info("forward: upstream no longer forwarded; its connections drain", "upstream", name, "listen", l.ln.Addr())
			f.retire(l)
			delete(f.ls, name)
		}
	}
	var errs []error
	for name, cfg := range ups {
		cfg = cfg.WithDefaults()
		l := f.ls[name]
		if l != nil && l.conf().Listen == cfg.Listen {
			l.cfg.Store(&cfg)
			continue
		}
		nl, err := f.newListener(name, cfg, nil)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if l != nil {
			f.log.Info("forward: listen address changed; connections on the old one drain", "upstream", name, "old", l.ln.Addr(), "new", nl.ln.Addr())
			f.retire(l)
		}
		f.ls[name] = nl
		if f.running {
			f.log.Info("forward: listening", "upstream", name, "addr", nl.ln.Addr().String())
			f.accepting.Go(nl.accept)
		}
	}
	return errors.Join(errs...)
}

// retire stops l accepting and closes its connections once its drain has run. Called with mu held.
func (f *Forwarder) retire(l *listener) {
	l.ln.Close()
	l.closing = true
	if l.drainT == nil {
		l.drainT = time.AfterFunc(l.conf().Drain, l.drained)
		f.retired = append(f.retired, l)
	}
}

// Run accepts connections until ctx ends; then the listeners stop accepting, open connections
// run on for their drain period and are closed, and Run returns once every one has ended.
func (f *Forwarder) Run(ctx context.Context) error {
	changed, cancel := f.src.Subscribe()
	defer cancel()
	f.mu.Lock()
	f.running = true
	for _, l := range f.ls {
		f.log.Info("forward: listening", "upstream", l.name, "addr", l.ln.Addr().String())
		f.accepting.Go(l.accept)
	}
	f.mu.Unlock()
	f.sync()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-changed:
			f.sync()
		}
	}
	f.mu.Lock()
	f.stopped = true
	for _, l := range f.ls {
		f.retire(l)
	}
	f.mu.Unlock()
	f.accepting.Wait()
	f.conns.Wait()
	f.mu.Lock()
	for _, l := range f.retired {
		l.drainT.Stop()
	}
	for _, b := range f.backends {
		if b.drain != nil {
			b.drain.Stop()
		}
	}
	f.mu.Unlock()
	return nil
}

// sync starts draining the backends that left the served set and stops draining those that returned.
func (f *Forwarder) sync() {
	snap := f.src.Snapshot()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.backends {
		served := false
		if u := snap.Lookup(b.key.Upstream); u != nil {
			for _, in := range u.Served {
				if in.ID == b.key.ID {
					served = true
					break
				}
			}
		}
		switch {
		case served && b.drain != nil:
			if b.drain.Stop() {
				b.drain = nil
			}
		case !served && b.drain == nil && !b.gone:
			f.log.Info("forward: instance left the served set, draining its connections",
				"upstream", b.key.Upstream, "instance", b.key.ID, "connections", len(b.sessions), "drain", b.l.conf().Drain)
			b.drain = time.AfterFunc(b.l.conf().Drain, func() { f.drained(b) })
		}
	}
}

// drained closes the connections to b at the end of its drain.
func (f *Forwarder) drained(b *backend) {
	f.mu.Lock()
	if b.drain == nil { // returned to the served set meanwhile
		f.mu.Unlock()
		return
	}
	b.gone = true
	ss := make([]*session, 0, len(b.sessions))
	for s := range b.sessions {
		ss = append(ss, s)
	}
	f.mu.Unlock()
	drained := f.met.drained.WithLabelValues(b.key.Upstream)
	for _, s := range ss {
		s.close(drained)
	}
}

// release gives back a connection reserved on b; a backend with no connection is forgotten.
func (f *Forwarder) release(b *backend) {
	f.mu.Lock()
	b.active--
	if b.active == 0 && len(b.sessions) == 0 {
		if b.drain != nil {
			b.drain.Stop()
		}
		delete(f.backends, b.key)
	}
	f.mu.Unlock()
}
