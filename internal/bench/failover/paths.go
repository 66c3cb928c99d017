package failover

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcxds "google.golang.org/grpc/xds"
)

// Setting is a vigil check setting the benchmark runs at.
type Setting struct {
	Name string
	// Check is the YAML of defaults.check, without kind.
	Check string
}

// Settings: vigil's defaults, and an aggressive one.
var (
	Defaults   = Setting{"default", "{}"}
	Aggressive = Setting{"aggressive", "{interval: 250ms, unhealthy_interval: 250ms, edge_interval: 50ms, timeout: 120ms}"}
)

// vigilProc is one vigil process, shared by its DNS and xDS paths (and a forwarder path: its
// upstream YAML adds each upstream's forwarder listener; its client sends to that listener and
// learns the instance from the answer: GET /id's body, or the gRPC header "instance").
type vigilProc struct {
	set Setting
	// upstreamYAML, if set, returns more YAML lines for the upstream of kind k.
	upstreamYAML func(k Kind) string
	once         sync.Once
	err          error
	refs         int
	mu           sync.Mutex
	cmd          *exec.Cmd
	dns          string // host:port
	xds          string
	forward      [numKinds]string // each upstream's forwarder listener, if upstreamYAML adds it
	done         chan struct{}
}

func (v *vigilProc) start(ctx context.Context, env *Env) error {
	v.once.Do(func() { v.err = v.run(ctx, env) })
	v.mu.Lock()
	v.refs++
	v.mu.Unlock()
	return v.err
}

func (v *vigilProc) run(ctx context.Context, env *Env) error {
	ports := make([]int, 3)
	for i := range ports {
		p, err := freePort("127.0.0.1")
		if err != nil {
			return err
		}
		ports[i] = p
	}
	v.dns, v.xds = fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	fw, err := forwardListeners()
	if err != nil {
		return err
	}
	v.forward = fw
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: info}\nadmin: {listen: 127.0.0.1:%d}\ndns: {listen: %q}\nxds: {listen: %q}\n", ports[2], v.dns, v.xds)
	// A DNS TTL of 0, as Consul's: a client that honours the TTL asks again for each request.
	fmt.Fprintf(&b, "defaults:\n  check: %s\n  dns: {ttl: 0s}\nupstreams:\n", v.set.Check)
	for k := range numKinds {
		check := "{kind: http, http: {path: /id}}"
		if k == GRPC {
			check = "{kind: grpc}"
		}
		fmt.Fprintf(&b, "  - name: %s\n    check: %s\n", k.Upstream(), check)
		if v.upstreamYAML != nil {
			b.WriteString(v.upstreamYAML(k))
		}
		b.WriteString("    instances:\n")
		for _, in := range env.Instances[k] {
			fmt.Fprintf(&b, "      - {address: %s, port: %d}\n", in.IP, in.Port)
		}
	}
	cfg := filepath.Join(env.Dir, "vigil-"+v.set.Name+".yaml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(env.Dir, "vigil-"+v.set.Name+".log"))
	if err != nil {
		return err
	}
	v.cmd = exec.Command(env.Vigil, "run", "-config", cfg)
	v.cmd.Stdout, v.cmd.Stderr = log, log
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := v.cmd.Start(); err != nil {
		return fmt.Errorf("failover: start vigil: %w", err)
	}
	v.done = make(chan struct{})
	go func() { _ = v.cmd.Wait(); log.Close(); close(v.done) }()
	return waitOffered(ctx, env, func(k Kind) Client { return newDNSClient(env, k, v.dns) }, v.done)
}

func (v *vigilProc) close() error {
	v.mu.Lock()
	v.refs--
	last := v.refs == 0
	v.mu.Unlock()
	if !last || v.cmd == nil || v.cmd.Process == nil {
		return nil
	}
	_ = v.cmd.Process.Signal(syscall.SIGKILL)
	<-v.done
	return nil
}

// waitOffered waits until a client of every kind is offered all three instances.
func waitOffered(ctx context.Context, env *Env, client func(Kind) Client, died <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for k := range numKinds {
		c := client(k)
		for {
			if off, _, _ := c.Do(ctx); off == 7 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("failover: %s instances not all offered within 30s", k)
			}
			select {
			case <-died:
				return fmt.Errorf("failover: the path's process exited (see its log in %s)", env.Dir)
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// VigilDNS is vigil's DNS frontend: the client resolves before each request (TTL 0).
type VigilDNS struct {
	v   *vigilProc
	env *Env
}

// VigilXDS is vigil's xDS server, followed by gRPC-Go's own xDS client (an xds:/// target).
type VigilXDS struct {
	v   *vigilProc
	env *Env
	cc  *grpc.ClientConn
}

// NewVigil returns the DNS, xDS and forwarder paths of one vigil process running at set (each
// upstream has a forwarder listener, used or not).
func NewVigil(set Setting) (*VigilDNS, *VigilXDS, *VigilForward) {
	v := &vigilProc{set: set}
	v.upstreamYAML = func(k Kind) string { return forwardYAML(v.forward[k]) }
	return &VigilDNS{v: v}, &VigilXDS{v: v}, &VigilForward{v: v}
}

func (p *VigilDNS) Name() string        { return "vigil-dns-" + p.v.set.Name }
func (p *VigilDNS) Carries(k Kind) bool { return true }
func (p *VigilDNS) Start(ctx context.Context, env *Env) error {
	p.env = env
	return p.v.start(ctx, env)
}
func (p *VigilDNS) Client(k Kind) (Client, error) { return newDNSClient(p.env, k, p.v.dns), nil }
func (p *VigilDNS) Close() error                  { return p.v.close() }

func (p *VigilXDS) Name() string        { return "vigil-xds-" + p.v.set.Name }
func (p *VigilXDS) Carries(k Kind) bool { return k == GRPC } // a proxyless gRPC client sends gRPC only
func (p *VigilXDS) Start(ctx context.Context, env *Env) error {
	p.env = env
	if err := p.v.start(ctx, env); err != nil {
		return err
	}
	bootstrap := fmt.Sprintf(`{"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "failover-bench-%s"}}`, p.v.xds, p.v.set.Name)
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		return fmt.Errorf("failover: xds resolver: %w", err)
	}
	p.cc, err = grpc.NewClient("xds:///"+GRPC.Upstream(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		return fmt.Errorf("failover: xds client: %w", err)
	}
	c := &grpcPathClient{env: env, cc: p.cc}
	deadline := time.Now().Add(30 * time.Second)
	var seen uint8
	for seen != 7 {
		off, _, _ := c.Do(ctx)
		seen |= off
		if time.Now().After(deadline) {
			return fmt.Errorf("failover: xds client reached instances %03b only within 30s", seen)
		}
	}
	return nil
}
func (p *VigilXDS) Client(k Kind) (Client, error) { return &grpcPathClient{env: p.env, cc: p.cc}, nil }
func (p *VigilXDS) Close() error {
	if p.cc != nil {
		p.cc.Close()
	}
	return p.v.close()
}

// ConsulDNS is Consul's own path: the instances registered in a Consul dev agent with its
// fastest checks (HTTP or gRPC every 1s, timeout 500ms), the client resolving through Consul DNS.
type ConsulDNS struct {
	env  *Env
	cmd  *exec.Cmd
	dns  string
	done chan struct{}
}

func (p *ConsulDNS) Name() string        { return "consul-dns" }
func (p *ConsulDNS) Carries(k Kind) bool { return true }
func (p *ConsulDNS) Start(ctx context.Context, env *Env) error {
	p.env = env
	var ports [6]int
	for i := range ports {
		port, err := freePort("127.0.0.1")
		if err != nil {
			return err
		}
		ports[i] = port
	}
	p.dns = fmt.Sprintf("127.0.0.1:%d", ports[0])
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	log, err := os.Create(filepath.Join(env.Dir, "consul.log"))
	if err != nil {
		return err
	}
	p.cmd = exec.Command(env.Consul, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1", "-log-level", "warn",
		fmt.Sprintf("-dns-port=%d", ports[0]), fmt.Sprintf("-http-port=%d", ports[1]), fmt.Sprintf("-serf-lan-port=%d", ports[2]),
		fmt.Sprintf("-serf-wan-port=%d", ports[3]), fmt.Sprintf("-server-port=%d", ports[4]), "-grpc-port=-1", "-grpc-tls-port=-1",
		"-data-dir", filepath.Join(env.Dir, "consul-data"))
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("failover: start consul: %w", err)
	}
	p.done = make(chan struct{})
	go func() { _ = p.cmd.Wait(); log.Close(); close(p.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/v1/status/leader")
		if err == nil {
			ok := resp.StatusCode == 200
			resp.Body.Close()
			if ok {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("failover: consul not up within 30s (log in %s)", env.Dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for k := range numKinds {
		for _, in := range env.Instances[k] {
			check := map[string]any{"Interval": "1s", "Timeout": "500ms"}
			if k == GRPC {
				check["GRPC"] = in.Addr()
			} else {
				check["HTTP"] = "http://" + in.Addr() + "/id"
			}
			reg := map[string]any{"ID": in.ID, "Name": k.Upstream(), "Address": in.IP, "Port": in.Port, "Check": check}
			body, _ := json.Marshal(reg)
			req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+httpAddr+"/v1/agent/service/register", bytes.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("failover: consul register: %w", err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("failover: consul register %s: %s", in.ID, resp.Status)
			}
		}
	}
	return waitOffered(ctx, env, func(k Kind) Client { return newDNSClient(env, k, p.dns) }, p.done)
}
func (p *ConsulDNS) Client(k Kind) (Client, error) { return newDNSClient(p.env, k, p.dns), nil }
func (p *ConsulDNS) Close() error {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
	return nil
}
