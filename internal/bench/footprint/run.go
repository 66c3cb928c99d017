package footprint

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Env is what a run needs: binaries, a directory for configs and logs, and the backends by kind.
type Env struct {
	Dir, Vigil, Consul string
	Baseline           string // another vigil binary measured alongside (before/after), or ""

	Backends     map[string]*backend
	Warm, Window time.Duration
}

// Sample is one measured window of one setup.
type Sample struct {
	Probes     float64 // per second, counted at the backend
	Cores      float64 // CPU of the prober (vigil or Consul) over the window
	PerProbe   float64 // µs of the prober's CPU per probe
	LagP99     float64 // ms, upper bound of the histogram bucket (vigil only; NaN otherwise)
	RSS        float64 // MB at the end of the window
	BackendPer float64 // µs of the backend's CPU per probe
	Steady     bool    // the warm-up reached 90% of the scheduled probe rate
}

// maxWarm bounds the wait for a prober to reach its steady probe rate (at 3,000 instances, the
// first TLS handshakes or gRPC connections take many seconds of CPU on a small machine).
const maxWarm = 15 * time.Second

// warmUp waits env.Warm, then until the backend answers at least 90% of n probes per second
// (at most maxWarm); it reports whether it did.
func warmUp(env *Env, be *backend, n int) (bool, error) {
	time.Sleep(env.Warm)
	if be == nil || n == 0 {
		return true, nil
	}
	deadline := time.Now().Add(maxWarm)
	for {
		c0, err := be.count()
		if err != nil {
			return false, err
		}
		t0 := time.Now()
		time.Sleep(500 * time.Millisecond)
		c1, err := be.count()
		if err != nil {
			return false, err
		}
		if float64(c1-c0)/time.Since(t0).Seconds() >= 0.9*float64(n) {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
	}
}

// vigilConfig is vigil's configuration with n instances of kind (none: no upstreams), in
// upstreams of three instances, with DNS, xDS and the admin API on.
func vigilConfig(kind string, n, port int, admin, dns, xds string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: warn}\nadmin: {listen: %q}\ndns: {listen: %q}\nxds: {listen: %q}\nallow_empty: true\n", admin, dns, xds)
	if n == 0 {
		b.WriteString("upstreams: []\n")
		return b.String()
	}
	check := "{kind: " + kind + "}"
	if kind == "https" || kind == "tls" {
		check = "{kind: " + kind + ", tls: {insecure_skip_verify: true}}"
	}
	fmt.Fprintf(&b, "defaults:\n  check: %s\nupstreams:\n", check)
	for i := range n {
		if i%3 == 0 {
			fmt.Fprintf(&b, "  - name: u%d\n    instances:\n", i/3)
		}
		fmt.Fprintf(&b, "      - {address: %s, port: %d}\n", instanceAddr(i), port)
	}
	return b.String()
}

// RunVigil measures vigil (the binary bin) probing n instances of kind (n = 0: idle, no
// upstreams); with ads, one ADS client (CDS and EDS, as an Envoy) is subscribed throughout.
func RunVigil(env *Env, bin, kind string, n int, ads bool) (Sample, error) {
	var ports [3]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return Sample{}, err
		}
		ports[i] = p
	}
	admin := fmt.Sprintf("127.0.0.1:%d", ports[0])
	var be *backend
	port := 0
	if n > 0 {
		be = env.Backends[kind]
		port = be.port
	}
	cfg := filepath.Join(env.Dir, "vigil.yaml")
	conf := vigilConfig(kind, n, port, admin, fmt.Sprintf("127.0.0.1:%d", ports[1]), fmt.Sprintf("127.0.0.1:%d", ports[2]))
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return Sample{}, err
	}
	log, err := os.Create(filepath.Join(env.Dir, "vigil.log"))
	if err != nil {
		return Sample{}, err
	}
	defer log.Close()
	p, err := start(log, bin, "run", "-config", cfg)
	if err != nil {
		return Sample{}, err
	}
	defer p.kill()
	if err := waitHTTP("http://"+admin+"/metrics", 20*time.Second, p.done); err != nil {
		return Sample{}, fmt.Errorf("%w (log in %s)", err, env.Dir)
	}
	if ads {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		stop, err := adsClient(ctx, fmt.Sprintf("127.0.0.1:%d", ports[2]))
		cancel()
		if err != nil {
			return Sample{}, err
		}
		defer stop()
	}
	steady, err := warmUp(env, be, n)
	if err != nil {
		return Sample{}, err
	}
	before, err := lagBuckets(admin)
	if err != nil {
		return Sample{}, err
	}
	s, err := measure(env, p, be)
	if err != nil {
		return Sample{}, err
	}
	after, err := lagBuckets(admin)
	if err != nil {
		return Sample{}, err
	}
	s.LagP99 = p99(before, after) * 1000
	s.Steady = steady
	return s, nil
}

// measure samples the prober's and the backend's CPU and the backend's probe count over the window.
func measure(env *Env, p *proc, be *backend) (Sample, error) {
	read := func() (cpu, bcpu, count int64, t time.Time, err error) {
		t = time.Now()
		if cpu, err = cpuNS(p.pid()); err != nil {
			return
		}
		if be != nil {
			if bcpu, err = cpuNS(be.p.pid()); err != nil {
				return
			}
			count, err = be.count()
		}
		return
	}
	cpu0, bcpu0, n0, t0, err := read()
	if err != nil {
		return Sample{}, err
	}
	time.Sleep(env.Window)
	cpu1, bcpu1, n1, t1, err := read()
	if err != nil {
		return Sample{}, err
	}
	el := t1.Sub(t0).Seconds()
	probes := float64(n1 - n0)
	s := Sample{Probes: probes / el, Cores: float64(cpu1-cpu0) / 1e9 / el, RSS: float64(rssKB(p.pid())) / 1024,
		PerProbe: math.NaN(), BackendPer: math.NaN(), LagP99: math.NaN()}
	if probes > 0 {
		s.PerProbe = float64(cpu1-cpu0) / 1e3 / probes
		s.BackendPer = float64(bcpu1-bcpu0) / 1e3 / probes
	}
	return s, nil
}

// RunConsul measures a Consul dev agent running n HTTP checks (interval 1s, timeout 500ms, as
// vigil's defaults) against the http backend's instances. The checks are in a configuration file
// read at start: registering thousands one by one through the agent API takes minutes on a busy
// machine (each is written to disk and synced), and the steady state is the same.
func RunConsul(env *Env, n int) (Sample, error) {
	var ports [5]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return Sample{}, err
		}
		ports[i] = p
	}
	be := env.Backends["http"]
	checks := make([]map[string]any, n)
	for i := range checks {
		checks[i] = map[string]any{"id": fmt.Sprintf("c%d", i), "name": fmt.Sprintf("c%d", i),
			"http": fmt.Sprintf("http://%s:%d/", instanceAddr(i), be.port), "interval": "1s", "timeout": "500ms"}
	}
	conf, _ := json.Marshal(map[string]any{"checks": checks})
	cfg := filepath.Join(env.Dir, "consul-checks.json")
	if err := os.WriteFile(cfg, conf, 0o644); err != nil {
		return Sample{}, err
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	log, err := os.Create(filepath.Join(env.Dir, "consul.log"))
	if err != nil {
		return Sample{}, err
	}
	defer log.Close()
	data := filepath.Join(env.Dir, "consul-data")
	_ = os.RemoveAll(data)
	p, err := start(log, env.Consul, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1", "-log-level", "error",
		fmt.Sprintf("-http-port=%d", ports[0]), fmt.Sprintf("-serf-lan-port=%d", ports[1]),
		fmt.Sprintf("-serf-wan-port=%d", ports[2]), fmt.Sprintf("-server-port=%d", ports[3]),
		fmt.Sprintf("-dns-port=%d", ports[4]), "-grpc-port=-1", "-grpc-tls-port=-1", "-data-dir", data, "-config-file", cfg)
	if err != nil {
		return Sample{}, err
	}
	defer p.kill()
	if err := waitHTTP("http://"+httpAddr+"/v1/status/leader", 30*time.Second, p.done); err != nil {
		return Sample{}, fmt.Errorf("%w (log in %s)", err, env.Dir)
	}
	steady, err := warmUp(env, be, n)
	if err != nil {
		return Sample{}, err
	}
	s, err := measure(env, p, be)
	s.Steady = steady
	return s, err
}
