package consulfleet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
)

// Mode is one way the vigils use Consul.
type Mode struct {
	Name      string
	Streaming bool // the client agent's use_streaming_backend
	Cache     bool // consul.use_cache in every vigil
}

// Modes are compared side by side: stale blocking queries forwarded to the servers (vigil before
// use_cache, against an agent without streaming), the agent cache, the streaming backend (Consul's
// default since 1.10), and both. DefaultModes leaves out streaming alone, to keep the run short.
var Modes = []Mode{
	{Name: "blocking"},
	{Name: "cache", Cache: true},
	{Name: "streaming", Streaming: true},
	{Name: "streaming+cache", Streaming: true, Cache: true},
}

// DefaultModes are the modes run unless VIGIL_CONSULFLEET_MODES names others.
var DefaultModes = []Mode{Modes[0], Modes[1], Modes[3]}

// Params sizes a run.
type Params struct {
	Sidecars, Upstreams, PerUpstream int
	Wait                             time.Duration // consul.wait_time
	Window                           time.Duration // each of the steady and churn windows
}

// Sample is one window's load, all sidecars together.
type Sample struct {
	HTTP       float64 // requests/s from the vigils to the client agent
	ServerRPC  float64 // requests/s served by the 3 servers (consul.rpc.request)
	ServerRead float64 // read queries/s on the servers (consul.rpc.query)
	ClientRPC  float64 // RPCs/s from the client agent to the servers (consul.client.rpc)
	ServerCPU  float64 // cores, the 3 servers together
	ClientCPU  float64 // cores, the client agent
	VigilCPU   float64 // cores, the benchmark process (the 100 vigils' watches)
	// Churn only: from a flip to each vigil's view of it (flips a vigil saw before the next flip).
	LagP50, LagP99 time.Duration
	Seen           float64 // fraction of (flip, vigil) pairs seen before the next flip
	// After churn: the time until every vigil shows the final state; all identical and right.
	Converge time.Duration
}

// Cluster is three Consul servers with a catalog of upstreams; each run adds a client agent.
type Cluster struct {
	bin, dir string
	p        Params
	servers  []*agent
}

// StartCluster starts the servers and registers p.Upstreams services of p.PerUpstream instances.
func StartCluster(ctx context.Context, bin, dir string, p Params) (*Cluster, error) {
	c := &Cluster{bin: bin, dir: dir, p: p}
	for i := range 3 {
		a := newAgent(bin, dir, fmt.Sprintf("server-%d", i+1), serverIP(i), true, true)
		if err := a.start(); err != nil {
			c.Close()
			return nil, err
		}
		c.servers = append(c.servers, a)
	}
	for _, a := range c.servers {
		if err := a.waitLeader(ctx, time.Minute); err != nil {
			c.Close()
			return nil, err
		}
	}
	for u := range p.Upstreams {
		for j := range p.PerUpstream {
			if err := c.setHealth(u, j, "passing"); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	return c, nil
}

// Close stops the servers.
func (c *Cluster) Close() {
	for _, a := range c.servers {
		a.stop()
	}
}

func upstream(u int) string { return fmt.Sprintf("svc-%02d", u) }

// setHealth registers instance j of upstream u (node inst-j) in the catalog with its check at status.
func (c *Cluster) setHealth(u, j int, status string) error {
	svc, node := upstream(u), fmt.Sprintf("inst-%d", j)
	id := fmt.Sprintf("%s-%d", svc, j)
	body, _ := json.Marshal(map[string]any{
		"Node": node, "Address": "127.0.0.1", "SkipNodeUpdate": true,
		"Service": map[string]any{"ID": id, "Service": svc, "Port": 20000 + u*10 + j},
		"Check":   map[string]any{"CheckID": "check-" + id, "Name": "probe", "ServiceID": id, "Status": status},
	})
	req, _ := http.NewRequest(http.MethodPut, "http://"+c.servers[0].addr()+"/v1/catalog/register", bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("consulfleet: register %s: %w", id, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("consulfleet: register %s: %s", id, resp.Status)
	}
	return nil
}

// view is one vigil's latest instances per upstream, and the times at which the flipping
// instance's health changed in it.
type view struct {
	mu    sync.Mutex
	ups   map[string][]discovery.Instance
	flips []flip
}

type flip struct {
	at       time.Time
	critical bool
}

const flipper = "dc1/inst-0/svc-00-0"

func (v *view) consume(ctx context.Context, up <-chan []discovery.Group) {
	for {
		select {
		case <-ctx.Done():
			return
		case gs := <-up:
			now := time.Now()
			v.mu.Lock()
			for _, g := range gs {
				v.ups[g.Upstream] = g.Instances
				if g.Upstream != upstream(0) {
					continue
				}
				for _, in := range g.Instances {
					if in.ID == flipper {
						crit := in.Health == discovery.Critical
						if n := len(v.flips); n == 0 || v.flips[n-1].critical != crit {
							v.flips = append(v.flips, flip{at: now, critical: crit})
						}
					}
				}
			}
			v.mu.Unlock()
		}
	}
}

// digest is the view's state: every upstream's instances and their health, or "" while incomplete.
func (v *view) digest(c *Cluster) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var b strings.Builder
	for u := range c.p.Upstreams {
		ins := v.ups[upstream(u)]
		if len(ins) != c.p.PerUpstream {
			return ""
		}
		for _, in := range ins {
			fmt.Fprintf(&b, "%s=%d,", in.ID, in.Health)
		}
	}
	return b.String()
}

// snapshot is the counters at one moment.
type snapshot struct {
	at                   time.Time
	http                 float64
	rpc, read            float64
	clientRPC            float64
	server, client, self int64 // CPU ticks
}

func (c *Cluster) snap(client *agent, reg *prometheus.Registry) (snapshot, error) {
	s := snapshot{at: time.Now()}
	for _, a := range c.servers {
		m, err := a.metrics()
		if err != nil {
			return s, err
		}
		s.rpc += m["consul_rpc_request"]
		s.read += m["consul_rpc_query"]
		s.server += a.cpuTicks()
	}
	m, err := client.metrics()
	if err != nil {
		return s, err
	}
	s.clientRPC = m["consul_client_rpc"]
	s.client = client.cpuTicks()
	fams, err := reg.Gather()
	if err != nil {
		return s, err
	}
	for _, f := range fams {
		if f.GetName() == "vigil_consul_requests_total" {
			for _, mm := range f.Metric {
				s.http += mm.Counter.GetValue()
			}
		}
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	s.self = (ru.Utime.Nano() + ru.Stime.Nano()) / 1e7
	return s, nil
}

func rates(a, b snapshot) Sample {
	d := b.at.Sub(a.at).Seconds()
	return Sample{
		HTTP: (b.http - a.http) / d, ServerRPC: (b.rpc - a.rpc) / d, ServerRead: (b.read - a.read) / d,
		ClientRPC: (b.clientRPC - a.clientRPC) / d,
		ServerCPU: float64(b.server-a.server) / 100 / d, ClientCPU: float64(b.client-a.client) / 100 / d,
		VigilCPU: float64(b.self-a.self) / 100 / d,
	}
}

// Run starts a client agent for m, p.Sidecars vigils' Consul discovery against it (each with its
// own client, as separate processes would have), waits until all are in sync, measures a steady
// window and a churn window (svc-00's first instance flips health every second), then checks that
// every vigil converges on the same, right state.
func (c *Cluster) Run(ctx context.Context, m Mode) (steady, churn Sample, err error) {
	client := newAgent(c.bin, c.dir, "client", clientIP, false, m.Streaming)
	if err := client.start(); err != nil {
		return steady, churn, err
	}
	defer client.stop()
	if err := client.waitLeader(ctx, time.Minute); err != nil {
		return steady, churn, err
	}
	reg := prometheus.NewRegistry()
	met := consul.NewMetrics(reg)
	cfg := consul.DefaultConfig()
	cfg.Enabled, cfg.Address, cfg.WaitTime, cfg.UseCache = true, client.addr(), c.p.Wait, m.Cache
	ups := map[string]consul.Upstream{}
	for u := range c.p.Upstreams {
		ups[upstream(u)] = consul.Upstream{}
	}
	vctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	views := make([]*view, c.p.Sidecars)
	var logw lockedBuffer
	for i := range views {
		cl, err := consul.NewClient(cfg, met)
		if err != nil {
			return steady, churn, err
		}
		o := consul.Options{Config: cfg, Upstreams: ups, Client: cl, Metrics: met}
		if i == 0 { // one vigil's warnings, for errors
			o.Logger = slog.New(slog.NewTextHandler(&logw, &slog.HandlerOptions{Level: slog.LevelWarn}))
		}
		d, err := consul.NewDiscovery(o)
		if err != nil {
			return steady, churn, err
		}
		v := &view{ups: map[string][]discovery.Instance{}}
		views[i] = v
		up := make(chan []discovery.Group, 1)
		// Sidecars start spread over half a wait_time, as a fleet's do: started all at once, the
		// 5,000 watches would stay in step, their blocking queries ending together every wait_time.
		if i > 0 && !sleep(ctx, c.p.Wait/2/time.Duration(c.p.Sidecars)) {
			return steady, churn, ctx.Err()
		}
		wg.Go(func() { d.Run(vctx, up) })
		wg.Go(func() { v.consume(vctx, up) })
	}
	if _, err := c.converge(ctx, views, time.Minute); err != nil {
		return steady, churn, fmt.Errorf("initial sync: %w; requests: %s; a vigil's log:\n%s", err, outcomes(reg), logw.tail(2000))
	}
	if !sleep(ctx, 2*time.Second) {
		return steady, churn, ctx.Err()
	}
	s0, err := c.snap(client, reg)
	if err != nil {
		return steady, churn, err
	}
	if !sleep(ctx, c.p.Window) {
		return steady, churn, ctx.Err()
	}
	s1, err := c.snap(client, reg)
	if err != nil {
		return steady, churn, err
	}
	steady = rates(s0, s1)

	// Churn: flip every second, starting critical.
	var flips []flip
	tick := time.NewTicker(time.Second)
	crit := false
	for range int(c.p.Window / time.Second) {
		crit = !crit
		at := time.Now()
		if err := c.setHealth(0, 0, map[bool]string{true: "critical", false: "passing"}[crit]); err != nil {
			tick.Stop()
			return steady, churn, err
		}
		flips = append(flips, flip{at: at, critical: crit})
		select {
		case <-tick.C:
		case <-ctx.Done():
			tick.Stop()
			return steady, churn, ctx.Err()
		}
	}
	tick.Stop()
	s2, err := c.snap(client, reg)
	if err != nil {
		return steady, churn, err
	}
	churn = rates(s1, s2)
	// Back to passing: every vigil must show it, all alike.
	if crit {
		if err := c.setHealth(0, 0, "passing"); err != nil {
			return steady, churn, err
		}
	}
	if churn.Converge, err = c.converge(ctx, views, time.Minute); err != nil {
		return steady, churn, fmt.Errorf("after churn: %w; a vigil's log:\n%s", err, logw.tail(2000))
	}
	churn.LagP50, churn.LagP99, churn.Seen = lags(flips, views)
	return steady, churn, nil
}

// converge waits until every view is complete, all alike, with every instance passing; it
// returns how long that took.
func (c *Cluster) converge(ctx context.Context, views []*view, within time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		first := views[0].digest(c)
		ok := first != "" && !strings.Contains(first, "="+fmt.Sprint(int(discovery.Critical))+",")
		for _, v := range views[1:] {
			if !ok {
				break
			}
			ok = v.digest(c) == first
		}
		if ok {
			return time.Since(start), nil
		}
		if time.Since(start) > within {
			n, incomplete := 0, 0
			for _, v := range views {
				switch d := v.digest(c); {
				case d == "":
					incomplete++
				case d == first:
					n++
				}
			}
			return 0, fmt.Errorf("consulfleet: vigils not converged within %s (%d of %d like the first, %d incomplete)",
				within, n, len(views), incomplete)
		}
		if !sleep(ctx, 10*time.Millisecond) {
			return 0, ctx.Err()
		}
	}
}

// lags: for each flip and vigil, the time until the vigil showed the flip's state, if it did
// before the next flip.
func lags(flips []flip, views []*view) (p50, p99 time.Duration, seen float64) {
	var ds []time.Duration
	total := 0
	for _, v := range views {
		v.mu.Lock()
		obs := slices.Clone(v.flips)
		v.mu.Unlock()
		for k, f := range flips {
			next := time.Now()
			if k+1 < len(flips) {
				next = flips[k+1].at
			}
			total++
			for _, o := range obs {
				if o.critical == f.critical && !o.at.Before(f.at) && o.at.Before(next) {
					ds = append(ds, o.at.Sub(f.at))
					break
				}
			}
		}
	}
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[(len(ds)*99)/100], float64(len(ds)) / float64(total)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// outcomes lists the vigils' requests by outcome, for errors.
func outcomes(reg *prometheus.Registry) string {
	fams, _ := reg.Gather()
	var b strings.Builder
	for _, f := range fams {
		if f.GetName() == "vigil_consul_requests_total" {
			for _, m := range f.Metric {
				for _, l := range m.Label {
					fmt.Fprintf(&b, "%s=%s ", l.GetName(), l.GetValue())
				}
				fmt.Fprintf(&b, "%.0f; ", m.Counter.GetValue())
			}
		}
	}
	return b.String()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	return s[max(0, len(s)-n):]
}
