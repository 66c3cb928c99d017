// Package chaos runs vigil with a 3-server Consul cluster and real backends on loopback, injects faults at random while clients use every frontend, and checks invariants throughout (make chaos).
package chaos

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sync/errgroup"
)

// Config is one chaos run.
type Config struct {
	Dir      string        // scratch directory: logs, data directories, configuration
	Vigil    string        // the vigil binary
	Backend  string        // the Go backend binary (HTTP keep-alive and gRPC health)
	Consul   string        // the consul binary
	Duration time.Duration // how long faults are injected
	Seed     uint64        // 0: from the clock
	// Window is the detection window: once it has passed, a killed or hung instance must be out
	// of every answer and a revived one back in.
	Window time.Duration
	// Grace is how long after vigil is ready a live instance may still be missing (its first
	// probe round after a restart: the last-known membership is loaded, not yet probed).
	Grace time.Duration
	// Recovered bounds how long after Consul is back the local registration must be passing again.
	Recovered time.Duration
	// Check is vigil's defaults.check, as YAML ("{}": the built-in defaults).
	Check string
	// Soak: instead of Consul and vigil faults, reloads (SIGHUP) every few seconds, and vigil's
	// memory, goroutines and open fds sampled every SampleEvery and reported as slopes.
	Soak        bool
	SampleEvery time.Duration
	// Clients is how many of each client run at once (default 1); a soak adds load with more.
	Clients int
	Log     func(format string, args ...any)
}

// Run starts everything, injects faults for cfg.Duration while the observers check, and reports.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed>>1))
	ins, err := newInstances(cfg.Dir, cfg.Backend)
	if err != nil {
		return nil, err
	}
	servers, client := newConsul(cfg.Consul, cfg.Dir)
	agents := append(append([]*consulAgent(nil), servers...), client)
	v, err := newVigil(cfg.Vigil, cfg.Dir, cmp.Or(cfg.Check, "{}"))
	if err != nil {
		return nil, err
	}
	app, err := net.Listen("tcp", net.JoinHostPort(appIP, strconv.Itoa(backendPort)))
	if err != nil {
		return nil, fmt.Errorf("chaos: the local service: %w", err)
	}
	defer app.Close()
	go acceptAll(app)
	defer func() {
		v.stop(syscall.SIGKILL, time.Second)
		for _, a := range agents {
			a.stop(syscall.SIGKILL, time.Second)
		}
		for _, in := range ins {
			in.stop(syscall.SIGKILL, time.Second)
		}
	}()

	m := newModel(cfg.Window, cfg.Grace, ins)
	in := &injector{cfg: cfg, m: m, rng: rng, ins: ins, servers: servers, client: client, vigil: v}
	if err := in.startAll(ctx); err != nil {
		return nil, err
	}
	cfg.Log("chaos: up (seed %d); injecting faults for %s", cfg.Seed, cfg.Duration)

	start := time.Now()
	octx, stopObservers := context.WithCancel(ctx)
	var obs sync.WaitGroup
	for range max(cfg.Clients, 1) {
		for _, f := range []func(){
			func() { observeDNS(octx, m, v.dns(), 20*time.Millisecond) },
			func() { observeAdmin(octx, m, v.admin(), 200*time.Millisecond) },
			func() { observeEDS(octx, m, v.xds()) },
			func() { observeForward(octx, m, v, 20*time.Millisecond) },
		} {
			obs.Add(1)
			go func() { defer obs.Done(); f() }()
		}
	}
	if err := observeGRPC(octx, m, v.xds(), 50*time.Millisecond); err != nil {
		stopObservers()
		obs.Wait()
		return nil, err
	}

	fctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	g, gctx := errgroup.WithContext(fctx)
	g.Go(func() error { return in.instanceFaults(gctx) })
	var samples []sample
	reloads := 0
	if cfg.Soak {
		g.Go(func() (err error) { reloads, err = in.reloads(gctx); return err })
		g.Go(func() error { samples = sampleResources(gctx, v.admin(), cfg.SampleEvery); return nil })
	} else {
		g.Go(func() error { return in.controlFaults(gctx) })
	}
	err = g.Wait()
	cancel()
	if err == nil && ctx.Err() == nil {
		// Heal everything and give the last faults their window, still observed.
		err = in.healAll(ctx)
	}
	stopObservers()
	obs.Wait()
	if err != nil {
		return nil, err
	}
	if races := countRaces(v.logf); races > 0 {
		m.mu.Lock()
		m.nviolation["data race reported by vigil"] += races
		m.mu.Unlock()
	}
	r := m.report(cfg.Seed, time.Since(start))
	if cfg.Soak {
		sl := slopes(samples, reloads)
		r.Slopes = &sl
	}
	return r, nil
}

// acceptAll is the local service: it accepts connections (vigil probes it with tcp) and closes them.
func acceptAll(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

func countRaces(logf string) int {
	b, err := os.ReadFile(logf)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "WARNING: DATA RACE")
}

// injector makes the faults and keeps the model's truth.
type injector struct {
	cfg     Config
	m       *model
	rng     *rand.Rand
	rngMu   sync.Mutex
	ins     []*instance
	servers []*consulAgent
	client  *consulAgent
	vigil   *vigilProc
	// consulMu is held by a fault that stops Consul agents, so that two never overlap.
	consulMu sync.Mutex
}

func (j *injector) intn(n int) int {
	j.rngMu.Lock()
	defer j.rngMu.Unlock()
	return j.rng.IntN(n)
}

// between returns a random duration in [lo, hi).
func (j *injector) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(j.intn(int(hi-lo)))
}

func (j *injector) startAll(ctx context.Context) error {
	for _, in := range j.ins {
		if err := j.startInstance(ctx, in); err != nil {
			return err
		}
	}
	for _, a := range append(append([]*consulAgent(nil), j.servers...), j.client) {
		if err := a.start(); err != nil {
			return err
		}
	}
	if err := j.waitConsul(ctx, 90*time.Second); err != nil {
		return err
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	for _, in := range j.ins {
		if err := registerInstance(ctx, hc, in); err != nil {
			return err
		}
	}
	if err := j.startVigil(ctx); err != nil {
		return err
	}
	// Every instance served everywhere before the first fault.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, err := j.allServed(ctx, hc)
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: not every instance served within 60s: %v (log %s)", err, j.vigil.logf)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (j *injector) allServed(ctx context.Context, hc *http.Client) (bool, error) {
	var t adminUpstreams
	if err := getJSON(ctx, hc, "http://"+j.vigil.admin()+"/v1/upstreams", &t); err != nil {
		return false, err
	}
	n := 0
	for _, u := range t.Upstreams {
		if strings.HasPrefix(u.Name, "local:") {
			continue // the local service, probed by vigil too
		}
		for _, in := range u.Instances {
			if in.Served {
				n++
			}
		}
	}
	if n != len(j.ins) {
		return false, fmt.Errorf("%d of %d served", n, len(j.ins))
	}
	return true, nil
}

func (j *injector) startInstance(ctx context.Context, in *instance) error {
	if err := in.start(); err != nil {
		return err
	}
	if err := waitDial(ctx, &in.proc, in.addr(), 10*time.Second); err != nil {
		return err
	}
	j.m.setAlive(in, true)
	return nil
}

// startVigil starts vigil and waits until its admin API answers (then it is "up").
func (j *injector) startVigil(ctx context.Context) error {
	if err := j.vigil.start(); err != nil {
		return err
	}
	for _, addr := range []string{j.vigil.admin(), j.vigil.xds(), j.vigil.dns()} {
		if err := waitDial(ctx, &j.vigil.proc, addr, 30*time.Second); err != nil {
			return err
		}
	}
	// DNS answers on UDP too (its TCP listener may open first).
	c := &mdns.Client{Net: "udp", Timeout: 100 * time.Millisecond}
	q := new(mdns.Msg)
	q.SetQuestion("consul.", mdns.TypeSOA)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, _, err := c.ExchangeContext(ctx, q, j.vigil.dns()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: vigil's DNS does not answer on UDP (log %s)", j.vigil.logf)
		}
	}
	// Every listener answers from here on: vigil is up.
	j.m.setVigilReady(true)
	return nil
}

// waitConsul waits until the client agent sees a leader.
func (j *injector) waitConsul(ctx context.Context, within time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	url := "http://" + net.JoinHostPort(clientIP, strconv.Itoa(consulHTTP)) + "/v1/status/leader"
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var leader string
		if err := getJSON(ctx, hc, url, &leader); err == nil && leader != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("chaos: %w within %s (logs in %s)", errNoLeader, within, j.cfg.Dir)
}

func registerInstance(ctx context.Context, hc *http.Client, in *instance) error {
	body := fmt.Sprintf(`{"ID": %q, "Name": %q, "Address": %q, "Port": %d}`, in.id, in.kind.Upstream(), in.ip, backendPort)
	url := "http://" + net.JoinHostPort(clientIP, strconv.Itoa(consulHTTP)) + "/v1/agent/service/register"
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("chaos: register %s: %w", in.id, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("chaos: register %s: %s", in.id, resp.Status)
	}
	return nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
