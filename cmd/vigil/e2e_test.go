package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/admin"
)

func TestMain(m *testing.M) {
	if os.Getenv("VIGIL_TEST_MAIN") == "1" { // the test binary re-executed as vigil itself
		main() // exits
	}
	goleak.VerifyTestMain(m)
}

// backend is a real loopback server that can be killed (listener and connections gone) and revived on the same port.
type backend struct {
	kind string
	addr string
	stop func()
}

func (b *backend) start(t *testing.T) {
	t.Helper()
	var l net.Listener
	var err error
	for range 50 { // the port may linger briefly after a kill
		if l, err = net.Listen("tcp", b.addr); err == nil {
			break
		}
		<-time.After(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen %s: %v", b.addr, err)
	}
	b.addr = l.Addr().String()
	switch b.kind {
	case "http":
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
		go srv.Serve(l)
		b.stop = func() { srv.Close() }
	case "grpc":
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go srv.Serve(l)
		b.stop = srv.Stop
	default:
		b.stop = serveTCP(l)
	}
}

func (b *backend) kill() { b.stop() }

func (b *backend) port() int {
	_, p, _ := net.SplitHostPort(b.addr)
	var n int
	fmt.Sscan(p, &n)
	return n
}

// startApp runs a wired vigil on cfg and returns its admin base URL.
func startApp(t *testing.T, yml string, opts ...func(*app)) string {
	t.Helper()
	cfg, err := configs.Parse([]byte(yml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	a, err := newApp(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	addrc := make(chan net.Addr, 1)
	a.onAdmin = func(ad net.Addr) { addrc <- ad }
	a.hup = make(chan os.Signal)
	for _, o := range opts {
		o(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(settle):
			t.Error("vigil did not stop after its context ended")
		}
	})
	select {
	case ad := <-addrc:
		return "http://" + ad.String()
	case err := <-done:
		t.Fatalf("vigil stopped: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("admin did not start")
	}
	return ""
}

func upstreams(t *testing.T, base string) map[string]admin.Upstream {
	t.Helper()
	resp, err := http.Get(base + "/v1/upstreams")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tab admin.Table
	if err := json.NewDecoder(resp.Body).Decode(&tab); err != nil {
		t.Fatal(err)
	}
	out := map[string]admin.Upstream{}
	for _, u := range tab.Upstreams {
		out[u.Name] = u
	}
	return out
}

func state(t *testing.T, base, upstream string, port int) admin.Instance {
	t.Helper()
	for _, in := range upstreams(t, base)[upstream].Instances {
		if in.Port == port {
			return in
		}
	}
	t.Fatalf("no instance %s:%d", upstream, port)
	return admin.Instance{}
}

const (
	// Generous for a shared 2-core machine under -race: a live instance starved of CPU past its
	// probe timeout would be judged dead and fail the test for nothing.
	interval  = 600 * time.Millisecond
	threshold = 2
	// settle bounds every wait: it only catches a hang. The tests assert what happens and in
	// which order, never how fast (the machine is shared and runs -race).
	settle = 15 * time.Second
)

// TestEndToEnd kills and revives real HTTP, TCP and gRPC servers and watches the admin JSON.
func TestEndToEnd(t *testing.T) {
	kinds := []string{"http", "tcp", "grpc"}
	backends := map[string][]*backend{}
	var ups strings.Builder
	for _, k := range kinds {
		fmt.Fprintf(&ups, "  - name: %s-svc\n    check: {kind: %s, http: {path: /healthz}}\n    instances:\n", k, k)
		for range 3 {
			b := &backend{kind: k, addr: "127.0.0.1:0"}
			b.start(t)
			t.Cleanup(func() { b.kill() })
			backends[k] = append(backends[k], b)
			fmt.Fprintf(&ups, "      - {address: 127.0.0.1, port: %d}\n", b.port())
		}
	}
	base := startApp(t, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
defaults:
  check: {interval: %s, unhealthy_interval: %s, edge_interval: 50ms, timeout: 450ms, healthy_threshold: %d, unhealthy_threshold: %d}
upstreams:
%s`, interval, interval, threshold, threshold, ups.String()))

	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "ready")
	for _, k := range kinds {
		if u := upstreams(t, base)[k+"-svc"]; u.Healthy != 3 {
			t.Fatalf("%s: %d healthy at start, want 3: %+v", k, u.Healthy, u.Instances)
		}
	}

	for _, k := range kinds {
		t.Run(k, func(t *testing.T) {
			victim := backends[k][1]
			killed := time.Now()
			victim.kill()
			testutil.Eventually(t, settle, 10*time.Millisecond, func() bool {
				return state(t, base, k+"-svc", victim.port()).State == "unhealthy"
			}, k+" instance unhealthy after kill")
			t.Logf("%s: unhealthy %s after the kill", k, time.Since(killed).Round(time.Millisecond))
			in := state(t, base, k+"-svc", victim.port())
			if in.Served || in.Reason == "" {
				t.Errorf("killed instance: served %v reason %q; want not served, with a reason", in.Served, in.Reason)
			}
			u := upstreams(t, base)[k+"-svc"]
			if u.Healthy != 2 || u.Served != 2 {
				t.Errorf("others: %d healthy, %d served; want 2 and 2", u.Healthy, u.Served)
			}
			for _, other := range kinds {
				if other != k && upstreams(t, base)[other+"-svc"].Healthy != 3 {
					t.Errorf("upstream %s disturbed", other)
				}
			}

			victim.start(t)
			revived := time.Now()
			testutil.Eventually(t, settle, 10*time.Millisecond, func() bool {
				return state(t, base, k+"-svc", victim.port()).State == "healthy"
			}, k+" instance healthy after revival")
			t.Logf("%s: healthy %s after the revival", k, time.Since(revived).Round(time.Millisecond))
			if in := state(t, base, k+"-svc", victim.port()); !in.Served {
				t.Error("revived instance not served")
			}
		})
	}
}

// TestUnresolvableAndClosed: bad addresses are just unhealthy, with the reason shown.
func TestUnresolvableAndClosed(t *testing.T) {
	base := startApp(t, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
defaults:
  check: {interval: 200ms, unhealthy_interval: 200ms, edge_interval: 50ms, timeout: 100ms}
upstreams:
  - name: bad
    instances:
      - {address: nosuch.invalid, port: 80}
      - {address: 127.0.0.1, port: %d}
`, testutil.ClosedPort(t)))
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool {
		u := upstreams(t, base)["bad"]
		return len(u.Instances) == 2 && u.Instances[0].State == "unhealthy" && u.Instances[1].State == "unhealthy"
	}, "both unhealthy")
	for _, in := range upstreams(t, base)["bad"].Instances {
		if in.Reason == "" {
			t.Errorf("%s: no reason", in.ID)
		}
		t.Logf("%s: %s", in.ID, in.Reason)
	}
}

// TestStatusCommand runs `vigil status` against a running vigil.
func TestStatusCommand(t *testing.T) {
	b := &backend{kind: "tcp", addr: "127.0.0.1:0"}
	b.start(t)
	defer b.kill()
	base := startApp(t, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
defaults: {check: {interval: 200ms, timeout: 100ms, unhealthy_interval: 200ms}}
upstreams:
  - name: db
    instances: [{address: 127.0.0.1, port: %d, zone: z1}]
`, b.port()))
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool {
		return upstreams(t, base)["db"].Healthy == 1
	}, "healthy")
	var out, errb bytes.Buffer
	if code := cli([]string{"status", "-addr", strings.TrimPrefix(base, "http://")}, &out, &errb); code != 0 {
		t.Fatalf("status exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"UPSTREAM", "db", "1/1 healthy", "HEALTHY", fmt.Sprintf("127.0.0.1:%d", b.port()), "z1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	if code := cli([]string{"status", "-addr", strings.TrimPrefix(base, "http://"), "nope"}, &out, &errb); code != 1 {
		t.Errorf("status of an unknown upstream: exit %d, want 1", code)
	}
}

func TestValidateCommand(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("upstreams:\n  - name: a\n    check: {timeout: 2s}\n    instances: [{address: 127.0.0.1, port: 0}]\n"), 0o600)
	var out, errb bytes.Buffer
	if code := cli([]string{"validate", "-config", bad}, &out, &errb); code != 1 {
		t.Errorf("validate bad: exit %d, want 1", code)
	}
	for _, want := range []string{"2 error(s)", "upstreams[0].check.timeout: must be less than interval", "upstreams[0].instances[0].port: must be between 1 and 65535, got 0"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("validate output lacks %q:\n%s", want, errb.String())
		}
	}
	out.Reset()
	if code := cli([]string{"validate"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "valid") {
		t.Errorf("validate embedded default: exit %d: %s", code, out.String())
	}
	if code := cli([]string{"run", "-config", bad}, &out, &errb); code != 1 {
		t.Errorf("run with a bad config: exit %d, want 1 (refuse to start)", code)
	}
	if code := cli([]string{"version"}, &out, &errb); code != 0 {
		t.Errorf("version: exit %d", code)
	}
}

// TestSignals runs vigil as a process on the embedded default with the demo, then stops it with
// SIGTERM (and SIGINT): it must exit 0.
func TestSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "vigil.yaml")
			os.WriteFile(cfg, []byte(fmt.Sprintf("admin: {listen: \"127.0.0.1:0\"}\nxds: {listen: \"127.0.0.1:0\"}\ndns: {listen: \"127.0.0.1:0\"}\nupstreams:\n  - name: a\n    instances: [{address: 127.0.0.1, port: %d}]\n",
				testutil.ClosedPort(t))), 0o600)
			cmd := exec.Command(os.Args[0], "run", "-config", cfg)
			cmd.Env = append(os.Environ(), "VIGIL_TEST_MAIN=1")
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			started := make(chan struct{})
			logc := make(chan string, 1)
			go func() { // read the log until EOF; note when the admin server is up
				var all strings.Builder
				sc := bufio.NewScanner(stderr)
				for sc.Scan() {
					all.WriteString(sc.Text() + "\n")
					if strings.Contains(sc.Text(), "admin: serving") {
						close(started)
					}
				}
				logc <- all.String()
			}()
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("vigil did not start:\n%s", <-logc)
			}
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { logs := <-logc; done <- cmd.Wait(); logc <- logs }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("exit: %v\n%s", err, <-logc)
				}
			case <-time.After(settle):
				cmd.Process.Kill()
				<-done
				t.Fatalf("vigil did not stop after %s", sig)
			}
		})
	}
}

// TestReload: SIGHUP applies a new configuration; a bad one is refused and the running one kept.
func TestReload(t *testing.T) {
	b1 := &backend{kind: "tcp", addr: "127.0.0.1:0"}
	b1.start(t)
	defer b1.kill()
	b2 := &backend{kind: "tcp", addr: "127.0.0.1:0"}
	b2.start(t)
	defer b2.kill()
	base := `
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
defaults: {check: {interval: 200ms, timeout: 100ms, unhealthy_interval: 200ms}}
upstreams:
`
	one := base + fmt.Sprintf("  - name: a\n    instances: [{address: 127.0.0.1, port: %d}]\n", b1.port())
	two := base + fmt.Sprintf("  - name: b\n    panic_threshold: 50\n    instances: [{address: 127.0.0.1, port: %d}]\n", b2.port())
	hup := make(chan os.Signal, 1)
	next := make(chan string, 1)
	parsed := make(chan error, 1)
	url := startApp(t, one, func(a *app) {
		a.hup = hup
		a.reload = func() (*configs.Config, error) {
			cfg, err := configs.Parse([]byte(<-next))
			parsed <- err
			return cfg, err
		}
	})
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool {
		return upstreams(t, url)["a"].Healthy == 1
	}, "a healthy")

	// A bad configuration: refused, everything stays as it was.
	v := upstreams(t, url)["a"].Version
	next <- "upstreams: [{name: Bad}]"
	hup <- syscall.SIGHUP
	if err := <-parsed; err == nil {
		t.Fatal("a bad configuration parsed")
	}
	if u := upstreams(t, url); len(u) != 1 || u["a"].Version != v || u["a"].Healthy != 1 {
		t.Fatalf("after a bad reload: %v", u)
	}

	next <- two
	hup <- syscall.SIGHUP
	if err := <-parsed; err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool {
		u := upstreams(t, url)
		return len(u) == 1 && u["b"].Healthy == 1
	}, "upstream a replaced by b, probed healthy")
	if p := upstreams(t, url)["b"].Policy.PanicThreshold; p != 50 {
		t.Errorf("b's policy after reload: panic_threshold %v, want 50", p)
	}
}
