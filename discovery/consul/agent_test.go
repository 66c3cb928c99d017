package consul_test

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Idle keep-alive connections of the API clients' transports.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// agent is one real Consul agent process on loopback ports, stopped by PID.
type agent struct {
	t       testing.TB
	bin     string
	name    string
	dc      string
	ip      string
	dev     bool
	dataDir string
	extra   []string

	http, dns, serfLAN, serfWAN, server int
	spare                               int // free for a test's own use, e.g. an HTTPS port

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *bytes.Buffer
}

type agentOpts struct {
	name, dc, ip string
	server       bool     // -server with a data dir instead of -dev
	extra        []string // more flags, e.g. -retry-join
}

func newAgent(t testing.TB, o agentOpts) *agent {
	t.Helper()
	bin := testutil.Need(t, "consul")
	if o.dc == "" {
		o.dc = "dc1"
	}
	if o.ip == "" {
		o.ip = "127.0.0.1"
	}
	if o.name == "" {
		o.name = "node-" + o.dc
	}
	a := &agent{
		t: t, bin: bin, name: o.name, dc: o.dc, ip: o.ip, dev: !o.server, extra: o.extra,
	}
	ports := freePorts(t, 6)
	a.http, a.dns, a.serfLAN, a.serfWAN, a.server, a.spare = ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
	if o.server {
		a.dataDir = filepath.Join(t.TempDir(), "data")
	}
	t.Cleanup(a.kill)
	return a
}

func (a *agent) addr() string { return a.ip + ":" + strconv.Itoa(a.http) }

func (a *agent) args() []string {
	args := []string{"agent", "-node", a.name, "-datacenter", a.dc, "-bind", a.ip, "-client", a.ip,
		"-http-port", strconv.Itoa(a.http), "-dns-port", strconv.Itoa(a.dns),
		"-serf-lan-port", strconv.Itoa(a.serfLAN), "-serf-wan-port", strconv.Itoa(a.serfWAN),
		"-server-port", strconv.Itoa(a.server), "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-log-level", "warn", "-hcl", "performance { raft_multiplier = 1 }"}
	if a.dev {
		args = append(args, "-dev")
	} else {
		args = append(args, "-server", "-data-dir", a.dataDir, "-hcl", `connect { enabled = false }`)
	}
	return append(args, a.extra...)
}

// start runs the agent and waits until it is up (and sees a leader, when wantLeader).
func (a *agent) start(wantLeader bool) {
	a.t.Helper()
	a.spawn()
	a.waitUp(wantLeader)
}

// spawn starts the agent process without waiting for it.
func (a *agent) spawn() {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	cmd := exec.Command(a.bin, a.args()...)
	a.log = &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = &lockedWriter{mu: &a.mu, w: a.log}, &lockedWriter{mu: &a.mu, w: a.log}
	if err := cmd.Start(); err != nil {
		a.t.Fatalf("consul %s: %v", a.name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	a.cmd, a.done = cmd, done
}

// waitUp waits until the agent answers (and sees a leader, when wantLeader).
func (a *agent) waitUp(wantLeader bool) {
	a.t.Helper()
	a.mu.Lock()
	done := a.done
	a.mu.Unlock()
	c := a.client()
	testutil.Eventually(a.t, 60*time.Second, 50*time.Millisecond, func() bool {
		select {
		case <-done:
			a.t.Fatalf("consul %s exited:\n%s", a.name, a.logs())
		default:
		}
		if !wantLeader {
			_, err := c.Agent().Self()
			return err == nil
		}
		l, err := c.Status().Leader()
		return err == nil && l != ""
	}, "consul agent "+a.name+" up")
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (a *agent) logs() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.log == nil {
		return ""
	}
	return a.log.String()
}

// kill stops the agent with SIGKILL (a crash) and waits for it to exit.
func (a *agent) kill() { a.stop(syscall.SIGKILL) }

func (a *agent) stop(sig syscall.Signal) {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func (a *agent) client() *api.Client {
	c, err := api.NewClient(&api.Config{Address: a.addr(), Scheme: "http"})
	if err != nil {
		a.t.Fatal(err)
	}
	return c
}

// vigilConfig is a watch configuration for tests: short waits and intervals.
func (a *agent) vigilConfig() consul.Config {
	c := consul.DefaultConfig()
	c.Enabled = true
	c.Address = a.addr()
	c.WaitTime = 5 * time.Second
	c.MinInterval = 10 * time.Millisecond
	c.BackoffBase = 50 * time.Millisecond
	c.BackoffMax = 500 * time.Millisecond
	return c
}

// register registers an instance of service on the agent, with a TTL check in the given status
// ("" for no check: passing).
func (a *agent) register(service, id string, port int, status string, meta map[string]string) {
	a.t.Helper()
	reg := &api.AgentServiceRegistration{ID: id, Name: service, Address: "127.0.0.1", Port: port, Meta: meta}
	if status != "" {
		reg.Check = &api.AgentServiceCheck{CheckID: "check:" + id, TTL: "10m", Status: status}
	}
	if err := a.client().Agent().ServiceRegister(reg); err != nil {
		a.t.Fatalf("register %s: %v", id, err)
	}
}

func (a *agent) setCheck(id, status string) {
	a.t.Helper()
	if err := a.client().Agent().UpdateTTL("check:"+id, "test", status); err != nil {
		a.t.Fatalf("update check of %s: %v", id, err)
	}
}

func (a *agent) deregister(id string) {
	a.t.Helper()
	if err := a.client().Agent().ServiceDeregister(id); err != nil {
		a.t.Fatalf("deregister %s: %v", id, err)
	}
}

// run runs f in a goroutine until the test ends (ctx canceled, then waited for).
func run(t testing.TB, f func(ctx context.Context)) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f(ctx) }()
	stop := func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("goroutine did not stop within 10s")
		}
	}
	t.Cleanup(stop)
	return stop
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

type consulClient = api.Client

func itoa(n int) string { return strconv.Itoa(n) }

// freePorts returns n distinct ports free on 127.0.0.1 (TCP and UDP) right now: all are held
// open together, so that no two are the same.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, l.Close)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // the UDP side is taken: try another
		}
		closers = append(closers, u.Close)
		ports = append(ports, port)
	}
	return ports
}
