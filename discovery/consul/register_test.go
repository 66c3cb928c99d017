package consul_test

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// fakeStatus stands in for cmd/vigil's view of the table: it tells the states it is given.
type fakeStatus struct {
	mu   sync.Mutex
	s    consul.Status
	subs []chan struct{}
}

func (f *fakeStatus) LocalStatus() consul.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.s
}

func (f *fakeStatus) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	f.subs = append(f.subs, ch)
	f.mu.Unlock()
	return ch, func() {}
}

// set changes the status: passing, or critical with reason "test says unhealthy".
func (f *fakeStatus) set(passing bool) {
	f.mu.Lock()
	f.s = consul.Status{Probed: true, Passing: passing}
	if !passing {
		f.s.Reason = "test says unhealthy"
	}
	subs := f.subs
	f.mu.Unlock()
	for _, ch := range subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func testService() consul.Service {
	s := consul.DefaultService()
	s.Name, s.Address, s.Port = "web", "127.0.0.1", 8080
	s.Tags, s.Meta = []string{"v1"}, map[string]string{"version": "1.2"}
	s.TTL, s.Heartbeat, s.Drain = 10*time.Second, 200*time.Millisecond, time.Second
	return s
}

// checkStatus returns the status of the registration's TTL check as the Consul catalog has it.
func checkStatus(t testing.TB, c *api.Client, service, checkID string) string {
	t.Helper()
	checks, _, err := c.Health().Checks(service, nil)
	if err != nil {
		return "error: " + err.Error()
	}
	for _, ch := range checks {
		if ch.CheckID == checkID {
			return ch.Status
		}
	}
	return "absent"
}

// digA asks Consul's DNS interface for the A records of name.
func digA(t testing.TB, dig string, port int, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, dig, "@127.0.0.1", "-p", strconv.Itoa(port), "+short", "+time=1", "+tries=1", name, "A").CombinedOutput()
	if err != nil {
		return "error: " + err.Error() + ": " + string(out)
	}
	return strings.TrimSpace(string(out))
}

// TestRegistration: the local service is registered with a TTL check that follows the probe,
// visible through Consul's HTTP API and DNS; registered again when the agent loses it; drained
// on shutdown (critical, still registered for the drain period, then deregistered).
func TestRegistration(t *testing.T) {
	dig := testutil.Need(t, "dig")
	a := newAgent(t, agentOpts{})
	a.start(true)
	c := a.client()
	reg := prometheus.NewRegistry()
	m := consul.NewMetrics(reg)
	fc := &fakeStatus{}
	r := must[*consul.Registration](t)(consul.NewRegistration(consul.RegistrationOptions{
		Service: testService(), Client: must[*consulClient](t)(consul.NewClient(a.vigilConfig(), m)),
		Status: fc, Metrics: m,
	}))
	runDone := make(chan error, 1)
	stopRun := run(t, func(ctx context.Context) { runDone <- r.Run(ctx) })

	status := func() string { return checkStatus(t, c, "web", r.CheckID()) }
	waitStatus := func(want string) {
		t.Helper()
		var got string
		testutil.Eventually(t, wait, 20*time.Millisecond, func() bool { got = status(); return got == want },
			"check status "+want)
	}
	waitDNS := func(want string) {
		t.Helper()
		var got string
		testutil.Eventually(t, wait, 50*time.Millisecond, func() bool { got = digA(t, dig, a.dns, "web.service.consul"); return got == want },
			"dig web.service.consul = "+want)
	}

	// Registered at once, critical until the first probe.
	waitStatus(api.HealthCritical)
	svc, _, err := c.Agent().Service(r.ID(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if svc.Service != "web" || svc.Port != 8080 || svc.Address != "127.0.0.1" || svc.Meta["version"] != "1.2" || len(svc.Tags) != 1 {
		t.Errorf("registered %+v", svc)
	}
	waitDNS("")

	fc.set(true)
	waitStatus(api.HealthPassing)
	waitDNS("127.0.0.1")
	if v := testutil.Metric(t, reg, "vigil_consul_registration_status", map[string]string{"status": "passing"}); v != 1 {
		t.Errorf("registration_status{passing} = %v", v)
	}

	fc.set(false)
	waitStatus(api.HealthCritical)
	waitDNS("")
	checks, _, _ := c.Health().Checks("web", nil)
	for _, ch := range checks {
		if ch.CheckID == r.CheckID() && !strings.Contains(ch.Output, "test says unhealthy") {
			t.Errorf("check output %q, want the probe's reason", ch.Output)
		}
	}
	fc.set(true)
	waitStatus(api.HealthPassing)

	t.Run("agent lost it", func(t *testing.T) {
		before := testutil.Metric(t, reg, "vigil_consul_registrations_total", nil)
		if err := c.Agent().ServiceDeregister(r.ID()); err != nil {
			t.Fatal(err)
		}
		waitStatus(api.HealthPassing)
		if after := testutil.Metric(t, reg, "vigil_consul_registrations_total", nil); after != before+1 {
			t.Errorf("registrations %v -> %v, want one more", before, after)
		}
	})

	t.Run("drain", func(t *testing.T) {
		start := time.Now()
		drained := make(chan error, 1)
		go func() { drained <- r.Drain(context.Background()) }()
		waitStatus(api.HealthCritical)
		waitDNS("")
		if _, _, err := c.Agent().Service(r.ID(), nil); err != nil {
			t.Errorf("deregistered before the drain period: %v", err)
		}
		fc.set(true) // a probe passing during the drain must not make it passing again
		select {
		case err := <-drained:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(wait):
			t.Fatal("drain did not finish")
		}
		if d := time.Since(start); d < time.Second {
			t.Errorf("drain took %s, want at least the drain period 1s", d)
		}
		if st := status(); st != "absent" {
			t.Errorf("after drain the check is %s, want absent", st)
		}
		stopRun()
		if err := <-runDone; err != nil {
			t.Errorf("run: %v", err)
		}
		if _, _, err := c.Agent().Service(r.ID(), nil); err == nil {
			t.Error("registered again after the drain")
		}
	})
}
