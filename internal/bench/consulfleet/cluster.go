// Package consulfleet measures the load that a fleet of vigils puts on a real Consul cluster.
package consulfleet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Every agent has its own loopback address, so all use Consul's default ports.
const (
	httpPort = 8500
	lanPort  = 8301
)

func serverIP(i int) string { return fmt.Sprintf("127.93.1.%d", i+1) }

const clientIP = "127.93.1.10"

// agent is one Consul agent process, ended only by its PID.
type agent struct {
	name, ip string
	argv     []string
	logf     string
	cmd      *exec.Cmd
	done     chan struct{}
}

func (a *agent) addr() string { return net.JoinHostPort(a.ip, strconv.Itoa(httpPort)) }

// newAgent returns a server (streaming enabled, bootstrap-expect 3) or a client agent whose
// streaming backend is on or off; telemetry keeps cumulative Prometheus counters.
func newAgent(bin, dir, name, ip string, server, streaming bool) *agent {
	a := &agent{name: name, ip: ip, logf: filepath.Join(dir, name+".log")}
	a.argv = []string{bin, "agent", "-node", name, "-datacenter", "dc1", "-bind", ip, "-client", ip,
		"-data-dir", filepath.Join(dir, name), "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-log-level", "warn", "-hcl", "performance { raft_multiplier = 1 }", "-hcl", "connect { enabled = false }",
		"-hcl", `telemetry { prometheus_retention_time = "1h" }`,
		// 100 vigils on one host hold 5,000 blocking queries to their agent (default limit: 200 per client IP).
		"-hcl", "limits { http_max_conns_per_client = 9000 }"}
	for i := range 3 {
		a.argv = append(a.argv, "-retry-join", net.JoinHostPort(serverIP(i), strconv.Itoa(lanPort)))
	}
	if server {
		a.argv = append(a.argv, "-server", "-bootstrap-expect", "3", "-hcl", "rpc { enable_streaming = true }")
	} else {
		a.argv = append(a.argv, "-hcl", fmt.Sprintf("use_streaming_backend = %t", streaming))
	}
	return a
}

func (a *agent) start() error {
	log, err := os.OpenFile(a.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(a.argv[0], a.argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("consulfleet: start %s: %w", a.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	a.cmd, a.done = cmd, done
	return nil
}

// stop ends the agent (SIGTERM, then SIGKILL after 10 s) and waits for it.
func (a *agent) stop() {
	if a.cmd == nil {
		return
	}
	_ = syscall.Kill(a.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.done
	}
	a.cmd = nil
}

// waitLeader waits until the agent answers and knows a leader.
func (a *agent) waitLeader(ctx context.Context, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		resp, err := http.Get("http://" + a.addr() + "/v1/status/leader")
		if err == nil {
			var b [64]byte
			n, _ := resp.Body.Read(b[:])
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(string(b[:n]), ":") {
				return nil
			}
		}
		select {
		case <-a.done:
			return fmt.Errorf("consulfleet: %s exited (log %s)", a.name, a.logf)
		case <-ctx.Done():
			return fmt.Errorf("consulfleet: %s has no leader within %s (log %s)", a.name, within, a.logf)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cpuTicks is the process's user+system CPU time in clock ticks (1/100 s), from /proc/PID/stat.
func (a *agent) cpuTicks() int64 {
	if a.cmd == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from the 3rd (state) on
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// metrics scrapes the agent's telemetry: the unlabelled value of each metric (counters, gauges),
// summed over label sets.
func (a *agent) metrics() (map[string]float64, error) {
	resp, err := http.Get("http://" + a.addr() + "/v1/agent/metrics?format=prometheus")
	if err != nil {
		return nil, fmt.Errorf("consulfleet: metrics of %s: %w", a.name, err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("consulfleet: metrics of %s: %w", a.name, err)
	}
	out := map[string]float64{}
	for name, mf := range fams {
		for _, m := range mf.Metric {
			switch {
			case m.Counter != nil:
				out[name] += m.Counter.GetValue()
			case m.Gauge != nil:
				out[name] += m.Gauge.GetValue()
			case m.Untyped != nil:
				out[name] += m.Untyped.GetValue()
			}
		}
	}
	return out, nil
}
