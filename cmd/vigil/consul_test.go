package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/admin"
)

// startConsul runs a real Consul dev agent on loopback ports until the test ends; it returns
// its HTTP address. Consul cannot be handed listeners: the ports are picked (each held until all
// are picked, so distinct), and if another process takes one before Consul binds it, Consul
// exits and is started again on new ones, three times at most.
func startConsul(t *testing.T) string {
	t.Helper()
	bin := testutil.Need(t, "consul")
	var logs bytes.Buffer
	for range 3 {
		var held []net.Listener
		p := func() string {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, l)
			return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		}
		httpPort := p()
		ports := []string{p(), p(), p(), p()}
		for _, l := range held {
			l.Close()
		}
		logs.Reset()
		cmd := exec.Command(bin, "agent", "-dev", "-node", "e2e", "-bind", "127.0.0.1", "-client", "127.0.0.1",
			"-http-port", httpPort, "-dns-port", ports[0], "-serf-lan-port", ports[1], "-serf-wan-port", ports[2], "-server-port", ports[3],
			"-grpc-port", "-1", "-grpc-tls-port", "-1", "-log-level", "warn")
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); <-done })
		addr := "127.0.0.1:" + httpPort
		c := consulClient(t, addr)
		exited := false
		testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() bool {
			select {
			case <-done:
				exited = true
				return true
			default:
			}
			l, err := c.Status().Leader()
			return err == nil && l != ""
		}, "consul up")
		if !exited {
			return addr
		}
		t.Logf("consul exited (a port taken?), starting it again:\n%s", logs.String())
	}
	t.Fatalf("consul did not start in 3 tries:\n%s", logs.String())
	return ""
}

func consulClient(t *testing.T, addr string) *api.Client {
	c, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestConsulEndToEnd runs vigil as a process with Consul: it serves an upstream found in Consul
// (probed for real), registers its own service with a TTL check that passes, and on SIGTERM marks
// it critical, keeps it registered for the drain period, deregisters it and exits 0.
func TestConsulEndToEnd(t *testing.T) {
	addr := startConsul(t)
	c := consulClient(t, addr)
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	local, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "api-1", Name: "api", Address: "127.0.0.1",
		Port: upstream.Addr().(*net.TCPAddr).Port}); err != nil {
		t.Fatal(err)
	}
	localPort := local.Addr().(*net.TCPAddr).Port
	cfg := filepath.Join(t.TempDir(), "vigil.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
discovery: {state_file: %q}
consul: {enabled: true, address: %q, wait_time: 5s}
service:
  name: web
  address: 127.0.0.1
  port: %d
  ttl: 5s
  drain: 1s
  check: {kind: tcp, interval: 200ms, unhealthy_interval: 200ms, timeout: 100ms}
upstreams:
  - name: api
    consul: {}
    check: {kind: tcp, interval: 200ms, unhealthy_interval: 200ms, timeout: 100ms}
`, filepath.Join(t.TempDir(), "state.json"), addr, localPort)), 0o600)
	cmd := exec.Command(os.Args[0], "run", "-config", cfg)
	cmd.Env = append(os.Environ(), "VIGIL_TEST_MAIN=1")
	logs, adminAddr := startLogged(t, cmd)
	var exitErr error
	done := make(chan struct{})
	go func() { exitErr = cmd.Wait(); close(done) }()
	defer func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	}()

	adminURL := <-adminAddr
	if adminURL == "" {
		t.Fatalf("vigil did not start its admin server:\n%s", logs.String())
	}
	checkID := "vigil:web-127.0.0.1-" + strconv.Itoa(localPort)
	status := func() string {
		checks, _, err := c.Health().Checks("web", nil)
		if err != nil {
			return err.Error()
		}
		for _, ch := range checks {
			if ch.CheckID == checkID {
				return ch.Status
			}
		}
		return "absent"
	}
	testutil.Eventually(t, 15*time.Second, 20*time.Millisecond, func() bool { return status() == api.HealthPassing },
		"the local service registered and passing")
	testutil.Eventually(t, 15*time.Second, 20*time.Millisecond, func() bool {
		resp, err := http.Get("http://" + adminURL + "/v1/upstreams/api")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var u admin.Upstream
		return json.NewDecoder(resp.Body).Decode(&u) == nil && u.Served == 1 && u.Healthy == 1
	}, "api served from Consul, probed healthy")

	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool { return status() == api.HealthCritical },
		"critical while draining")
	select {
	case <-done:
		t.Fatalf("vigil exited during the drain: %v\n%s", exitErr, logs.String())
	default:
	}
	select {
	case <-done:
		if exitErr != nil {
			t.Fatalf("exit: %v\n%s", exitErr, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("vigil did not stop after the drain\n%s", logs.String())
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("stopped %s after SIGTERM, want at least the drain period 1s", d)
	}
	if st := status(); st != "absent" {
		t.Errorf("after exit the check is %s, want deregistered", st)
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var adminServing = regexp.MustCompile(`msg="admin: serving" addr=(\S+)`)

// startLogged starts cmd (vigil as a process, its admin server on port 0) and collects its log;
// the channel gives the address the admin server reports once it listens, or "" if the log ends
// first or within 30 s it does not come.
func startLogged(t *testing.T, cmd *exec.Cmd) (*syncBuffer, <-chan string) {
	t.Helper()
	logs := new(syncBuffer)
	cmd.Stdout = logs
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	found := make(chan string, 1)
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			logs.Write(append(sc.Bytes(), '\n'))
			if m := adminServing.FindStringSubmatch(sc.Text()); m != nil && !sent {
				found <- m[1]
				sent = true
			}
		}
		close(found)
	}()
	go func() {
		select {
		case a := <-found:
			addrc <- a
		case <-time.After(30 * time.Second):
			addrc <- ""
		}
	}()
	return logs, addrc
}
