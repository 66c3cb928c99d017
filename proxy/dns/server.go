// Package dns answers Consul-style DNS queries for upstream services from the endpoint table.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/proxy/table"
)

// Server is the DNS frontend. Run serves it on UDP, with one read loop per SO_REUSEPORT socket
// that answers plain queries straight from the wire (udp.go), and on TCP with a miekg/dns
// Server; both end in the same answer code. Server is also a miekg/dns Handler (ServeDNS), which
// TCP and the UDP queries off the fast path go through.
type Server struct {
	cfg      Config
	table    Table
	log      *slog.Logger
	m        *metrics
	localDC  string
	domains  [2]domain
	nDomains int
	allow    []netip.Prefix
	rrl      *rrl // nil: no rate limit
	negTTL   uint32

	idx  atomic.Pointer[index]
	ttls atomic.Pointer[ttls]
	kick chan struct{} // SetTTLs asks Run for a new index
	// slowSem bounds the UDP queries off the fast path in flight.
	slowSem chan struct{}
	// miekgUDP serves UDP with miekg/dns's server instead of the fast path: on a wildcard
	// address, where replies must leave from the address each query came to (IP_PKTINFO).
	miekgUDP bool
	bufs     sync.Pool // *[]byte of maxTCP bytes
	ready    chan struct{}
	addr     atomic.Pointer[string]
}

// domain is one domain vigil answers for.
type domain struct {
	name   string // lowercase, fully qualified: "consul."
	labels int
}

const (
	maxUDP = 4096  // the largest UDP response, whatever the client's EDNS0 buffer
	maxTCP = 65535 // the largest message
)

var _ mdns.Handler = (*Server)(nil)

// Table is what the DNS server reads of the endpoint table (*table.Table): the current snapshot,
// and a signal after each new one.
type Table interface {
	Snapshot() *table.Snapshot
	Subscribe() (<-chan struct{}, func())
}

// New returns a Server answering from t. reg and log may be nil.
func New(cfg Config, t Table, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dns: config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, table: t, log: log, m: m,
		localDC: strings.ToLower(cfg.Datacenter),
		negTTL:  uint32(cfg.NegativeTTL / time.Second),
		ready:   make(chan struct{}),
		kick:    make(chan struct{}, 1),
		slowSem: make(chan struct{}, maxSlow),
	}
	s.ttls.Store(&ttls{def: cfg.TTL, per: maps.Clone(cfg.TTLs)})
	for _, d := range []string{cfg.Domain, cfg.AltDomain} {
		if d != "" {
			d = strings.ToLower(mdns.Fqdn(d))
			s.domains[s.nDomains] = domain{name: d, labels: mdns.CountLabel(d)}
			s.nDomains++
		}
	}
	for _, p := range cfg.AllowRecursion {
		s.allow = append(s.allow, netip.MustParsePrefix(p).Masked()) // validated above
	}
	s.rrl = newRRL(cfg.RateLimit)
	s.bufs.New = func() any { b := make([]byte, 0, maxTCP); return &b }
	if ap, err := netip.ParseAddrPort(cfg.Listen); err == nil && ap.Addr().IsUnspecified() {
		s.miekgUDP = true
	}
	s.idx.Store(s.buildIndex(t.Snapshot(), s.ttls.Load(), nil))
	return s, nil
}

// SetTTLs replaces the answer TTLs (on a configuration reload): def for upstreams not in
// per. Running servers answer with them once Run has rebuilt its index, at once.
func (s *Server) SetTTLs(def time.Duration, per map[string]time.Duration) {
	s.ttls.Store(&ttls{def: def, per: maps.Clone(per)})
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Ready is closed once Run listens on UDP and TCP.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the address Run listens on (UDP and TCP share the port), or "" before Ready.
func (s *Server) Addr() string {
	if a := s.addr.Load(); a != nil {
		return *a
	}
	return ""
}

// Run serves DNS on cfg.Listen over UDP and TCP until ctx ends, then shuts the servers down
// and returns nil; it returns an error if it cannot listen or a server fails.
func (s *Server) Run(ctx context.Context) error {
	changed, unsubscribe := s.table.Subscribe()
	defer unsubscribe()
	s.refresh()

	pcs, l, err := listen(s.cfg.Listen, runtime.GOMAXPROCS(0))
	if err != nil {
		return err
	}
	done := make(chan stopped, len(pcs)+1)
	var slow sync.WaitGroup // UDP queries off the fast path
	defer slow.Wait()
	var runs []*serverRun
	for _, pc := range pcs {
		if s.miekgUDP {
			runs = append(runs, s.start(&mdns.Server{PacketConn: pc, UDPSize: maxUDP}, done))
		} else {
			runs = append(runs, s.startUDP(pc, &slow, done))
		}
	}
	runs = append(runs, s.start(&mdns.Server{Listener: l}, done))
	var failed error
	for _, r := range runs { // wait until each server has started or stopped
		for waiting := true; waiting && !r.finished; {
			select {
			case <-r.started:
				waiting = false
			case st := <-done:
				st.run.finished, failed = true, st.err
			}
		}
	}
	if failed == nil {
		addr := l.Addr().String()
		s.addr.Store(&addr)
		close(s.ready)
		s.log.Info("dns: listening", "addr", addr, "domain", s.cfg.Domain, "udp_sockets", len(pcs))
	}
	for failed == nil {
		select {
		case <-ctx.Done():
			return shutdown(runs, done)
		case <-changed:
			s.refresh()
		case <-s.kick:
			s.refresh()
		case st := <-done:
			st.run.finished, failed = true, st.err
		}
	}
	shutdown(runs, done)
	return fmt.Errorf("dns: serve %s: %w", s.cfg.Listen, failed)
}

// refresh publishes an index of the table's current snapshot.
func (s *Server) refresh() {
	snap, t := s.table.Snapshot(), s.ttls.Load()
	prev := s.idx.Load()
	if prev.version == snap.Version && prev.ttls == t {
		return
	}
	s.idx.Store(s.buildIndex(snap, t, prev))
	s.m.rebuilds.Inc()
}

// serverRun is one serving goroutine: a UDP socket's loop, or the TCP miekg/dns server.
type serverRun struct {
	stop     func(context.Context) error
	started  chan struct{}
	finished bool
}

type stopped struct {
	run *serverRun
	err error
}

func (s *Server) start(srv *mdns.Server, done chan<- stopped) *serverRun {
	r := &serverRun{stop: srv.ShutdownContext, started: make(chan struct{})}
	srv.Handler = s
	srv.MsgAcceptFunc = accept
	srv.DecorateReader = decorateStrict
	srv.MsgInvalidFunc = func(m []byte, _ error) {
		if len(m) >= 12 && m[2]&0x80 == 0 { // answered FORMERR
			s.observe(time.Now(), 0, mdns.RcodeFormatError, false)
		}
	}
	srv.NotifyStartedFunc = func() { close(r.started) }
	go func() {
		err := srv.ActivateAndServe()
		if err == nil {
			err = errors.New("server stopped")
		}
		done <- stopped{r, err}
	}()
	return r
}

func (s *Server) startUDP(pc *net.UDPConn, slow *sync.WaitGroup, done chan<- stopped) *serverRun {
	r := &serverRun{stop: func(context.Context) error { return pc.Close() }, started: make(chan struct{})}
	close(r.started)
	go func() {
		err := s.serveUDP(pc, slow)
		if err == nil {
			err = errors.New("udp socket closed")
		}
		done <- stopped{r, err}
	}()
	return r
}

// shutdown stops every server still running and waits for all of them.
func shutdown(runs []*serverRun, done <-chan stopped) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	pending := 0
	for _, r := range runs {
		if r.finished {
			continue
		}
		pending++
		if err := r.stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for ; pending > 0; pending-- {
		st := <-done
		st.run.finished = true
	}
	if len(errs) > 0 {
		return fmt.Errorf("dns: shutdown: %w", errors.Join(errs...))
	}
	return nil
}

// accept lets every query through to ServeDNS, which answers FORMERR and NOTIMP itself;
// responses are ignored, as miekg/dns does by default.
func accept(h mdns.Header) mdns.MsgAcceptAction {
	if h.Bits&(1<<15) != 0 {
		return mdns.MsgIgnore
	}
	return mdns.MsgAccept
}

// listen binds n UDP sockets (SO_REUSEPORT where available) and one TCP listener on the same port.
func listen(addr string, n int) ([]*net.UDPConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: listen %s: %w", addr, err)
	}
	if !reusePortSupported {
		n = 1
	}
	lc := net.ListenConfig{Control: reusePort}
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listen %s: %w", addr, err)
		}
		bound := net.JoinHostPort(host, fmt.Sprint(l.Addr().(*net.TCPAddr).Port))
		var pcs []*net.UDPConn
		for len(pcs) < n {
			pc, err := lc.ListenPacket(context.Background(), "udp", bound)
			if err != nil {
				for _, p := range pcs {
					p.Close()
				}
				l.Close()
				if port == "0" && attempt < 10 && errors.Is(err, syscall.EADDRINUSE) {
					pcs = nil
					break // the TCP port's UDP twin is taken: try another port
				}
				return nil, nil, fmt.Errorf("dns: listen udp %s: %w", bound, err)
			}
			pcs = append(pcs, pc.(*net.UDPConn))
		}
		if len(pcs) == n {
			return pcs, l, nil
		}
	}
}
