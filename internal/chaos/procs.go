package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// proc is one child process that can be started again after it ended (same arguments), ended
// only by its PID.
type proc struct {
	name string
	argv []string
	logf string // appended to by every start

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("chaos: %s already running", p.name)
	}
	log, err := os.OpenFile(p.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("chaos: start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

// running reports whether the process is alive (a stopped one counts as alive).
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exited is closed when the current process ends (nil when none was started).
func (p *proc) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// signal sends s to the running process.
func (p *proc) signal(s syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("chaos: %s not running", p.name)
	}
	return syscall.Kill(p.cmd.Process.Pid, s)
}

// stop sends sig (SIGCONT first, so that a stopped process can act on it), waits up to grace
// for the process to end, then kills it.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
	_ = syscall.Kill(cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// waitDial waits until addr accepts TCP connections, the process ends, or the wait runs out.
func waitDial(ctx context.Context, p *proc, addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	exited := p.exited()
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("chaos: %s exited at start (log %s)", p.name, p.logf)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return fmt.Errorf("chaos: %s not accepting on %s within %s (log %s)", p.name, addr, within, p.logf)
}

// Kind is a kind of upstream backend.
type Kind int

// Backend kinds: each upstream has three instances of one kind.
const (
	KeepAlive Kind = iota // Go net/http: keeps connections alive
	Closing               // python3 -m http.server: closes each connection after its response
	GRPC                  // gRPC health server
	numKinds
)

// Upstream is the upstream's (and Consul service's) name.
func (k Kind) Upstream() string { return [numKinds]string{"keepalive", "closing", "grpc"}[k] }

// instance is one backend process on its own loopback address.
type instance struct {
	kind  Kind
	id    string
	ip    string
	alive bool      // accepting and answering (not killed, not stopped); owned by the injector
	since time.Time // when alive last changed
	proc
}

func (in *instance) addr() string { return net.JoinHostPort(in.ip, strconv.Itoa(backendPort)) }

// Fixed loopback addresses: the chaos run restarts vigil and Consul, which must come back where
// their clients look for them; a /16 of its own keeps them apart from every other test.
const (
	vigilIP     = "127.88.0.1"
	clientIP    = "127.88.1.10" // the Consul client agent vigil talks to
	appIP       = "127.88.5.1"  // the local service vigil registers
	backendPort = 28080
	dnsPort     = 28600
	xdsPort     = 28000
	adminPort   = 29480
	forwardPort = 28100 // + kind: the forwarder's listener of each HTTP upstream

	consulHTTP, consulServer, consulLAN, consulWAN = 28500, 28300, 28301, 28302
)

func serverIP(i int) string { return fmt.Sprintf("127.88.1.%d", i+1) }

func newInstances(dir, backend string) ([]*instance, error) {
	var all []*instance
	for k := range numKinds {
		for i := range 3 {
			in := &instance{kind: k, id: fmt.Sprintf("%s-%d", k.Upstream(), i), ip: fmt.Sprintf("127.88.%d.%d", k+2, i+1)}
			in.name = in.id
			in.logf = filepath.Join(dir, in.id+".log")
			switch k {
			case Closing:
				d := filepath.Join(dir, in.id)
				if err := os.MkdirAll(d, 0o755); err != nil {
					return nil, err
				}
				if err := os.WriteFile(filepath.Join(d, "id"), []byte(in.id), 0o644); err != nil {
					return nil, err
				}
				in.argv = []string{"python3", "-m", "http.server", strconv.Itoa(backendPort), "--bind", in.ip, "--directory", d}
			case GRPC:
				in.argv = []string{backend, "-kind", "grpc", "-listen", in.addr(), "-id", in.id}
			default:
				in.argv = []string{backend, "-kind", "http", "-listen", in.addr(), "-id", in.id}
			}
			all = append(all, in)
		}
	}
	return all, nil
}

// consulAgent is one Consul agent (server or client) with its data directory kept across restarts.
type consulAgent struct {
	ip     string
	server bool
	proc
}

// newConsul returns three servers and one client agent, joined to each other, not started.
func newConsul(bin, dir string) (servers []*consulAgent, client *consulAgent) {
	var join []string
	for i := range 3 {
		join = append(join, "-retry-join", net.JoinHostPort(serverIP(i), strconv.Itoa(consulLAN)))
	}
	mk := func(name, ip string, server bool) *consulAgent {
		a := &consulAgent{ip: ip, server: server}
		a.name = "consul-" + name
		a.logf = filepath.Join(dir, a.name+".log")
		a.argv = []string{bin, "agent", "-node", name, "-datacenter", "dc1", "-bind", ip, "-client", ip,
			"-data-dir", filepath.Join(dir, a.name),
			"-http-port", strconv.Itoa(consulHTTP), "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
			"-serf-lan-port", strconv.Itoa(consulLAN), "-serf-wan-port", strconv.Itoa(consulWAN),
			"-server-port", strconv.Itoa(consulServer), "-log-level", "warn",
			"-hcl", "performance { raft_multiplier = 1 }", "-hcl", "connect { enabled = false }"}
		if server {
			a.argv = append(a.argv, "-server", "-bootstrap-expect", "3")
		}
		a.argv = append(a.argv, join...)
		return a
	}
	for i := range 3 {
		servers = append(servers, mk(fmt.Sprintf("server-%d", i+1), serverIP(i), true))
	}
	return servers, mk("client", clientIP, false)
}

// vigilProc is the vigil under test.
type vigilProc struct {
	config, state string
	proc
}

func (v *vigilProc) dns() string   { return net.JoinHostPort(vigilIP, strconv.Itoa(dnsPort)) }
func (v *vigilProc) xds() string   { return net.JoinHostPort(vigilIP, strconv.Itoa(xdsPort)) }
func (v *vigilProc) admin() string { return net.JoinHostPort(vigilIP, strconv.Itoa(adminPort)) }

// forward is the forwarder's listener for kind k's upstream.
func (v *vigilProc) forward(k Kind) string {
	return net.JoinHostPort(vigilIP, strconv.Itoa(forwardPort+int(k)))
}

// newVigil writes vigil's configuration: the three upstreams from Consul, each probed for real
// with defaults.check as given (YAML),
// the local service registered, the last-known membership persisted.
func newVigil(bin, dir, check string) (*vigilProc, error) {
	v := &vigilProc{config: filepath.Join(dir, "vigil.yaml"), state: filepath.Join(dir, "membership.json")}
	v.name = "vigil"
	v.logf = filepath.Join(dir, "vigil.log")
	v.argv = []string{bin, "run", "-config", v.config}
	var b bytes.Buffer
	fmt.Fprintf(&b, `log: {level: debug}
admin: {listen: %q}
discovery: {state_file: %q}
consul: {enabled: true, address: "%s:%d", wait_time: 5s, min_interval: 50ms, backoff_base: 100ms, backoff_max: 1s}
service:
  name: chaos-app
  address: %s
  port: %d
  ttl: 5s
  drain: 200ms
  check: {kind: tcp}
defaults:
  check: %s
  dns: {ttl: 0s}
dns: {listen: %q}
xds: {listen: %q}
upstreams:
  - {name: keepalive, consul: {}, check: {kind: http, http: {path: /id}}, forward: {listen: %q}}
  - {name: closing, consul: {}, check: {kind: http, http: {path: /id}}, forward: {listen: %q}}
  - {name: grpc, consul: {}, check: {kind: grpc}}
`, v.admin(), v.state, clientIP, consulHTTP, appIP, backendPort, check, v.dns(), v.xds(), v.forward(KeepAlive), v.forward(Closing))
	return v, os.WriteFile(v.config, b.Bytes(), 0o644)
}

// buildGo builds a main package into dir.
func buildGo(dir, pkg, name string, race bool) (string, error) {
	out := filepath.Join(dir, name)
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	msg, err := exec.Command("go", append(args, pkg)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("chaos: go build %s: %w\n%s", pkg, err, msg)
	}
	return out, nil
}

var errNoLeader = errors.New("chaos: no Consul leader")
