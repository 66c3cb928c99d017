package main

import (
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// TestConsulMaintenance: `vigil maint enable local:NAME` puts the local service into Consul's own
// maintenance mode (a real agent), is put back after the agent lost the registration and vigil
// restarted, and `vigil maint disable` takes it out.
func TestConsulMaintenance(t *testing.T) {
	addr := startConsul(t)
	c := consulClient(t, addr)
	local, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	localPort := local.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, "s3cret")
	path := filepath.Join(dir, "vigil.yaml")
	writeFile(t, path, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0", token_file: %q}
discovery: {state_file: %q}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
consul: {enabled: true, address: %q, wait_time: 5s}
service:
  name: web
  address: 127.0.0.1
  port: %d
  ttl: 5s
  check: {kind: tcp, interval: 200ms, unhealthy_interval: 200ms, timeout: 100ms}
allow_empty: true
`, tokenFile, filepath.Join(dir, "state.json"), addr, localPort))
	serviceID := fmt.Sprintf("web-127.0.0.1-%d", localPort)
	maintCheck := "_service_maintenance:" + serviceID
	checkStatus := func(id string) (string, string) {
		checks, err := c.Agent().Checks()
		if err != nil {
			return err.Error(), ""
		}
		if ch, ok := checks[id]; ok {
			return ch.Status, ch.Notes
		}
		return "absent", ""
	}

	r := runApp(t, path)
	testutil.Eventually(t, 15*time.Second, 20*time.Millisecond, func() bool {
		st, _ := checkStatus("vigil:" + serviceID)
		return st == api.HealthPassing
	}, "the local service registered and passing")
	maint := func(args ...string) int {
		var out, errb bytes.Buffer
		code := cli(append([]string{"maint"}, append(args, "-addr", r.addr, "-token-file", tokenFile)...), &out, &errb)
		if errb.Len() > 0 {
			t.Logf("maint %v: %s", args, errb.String())
		}
		return code
	}
	if code := maint("enable", "local:web", "-reason", "deploy 42"); code != 0 {
		t.Fatalf("maint enable local:web: exit %d", code)
	}
	if st, notes := checkStatus(maintCheck); st != api.HealthCritical || notes != "deploy 42" {
		t.Fatalf("consul maintenance check: %s %q, want critical with the reason", st, notes)
	}
	if in := r.a.table.Snapshot().Lookup("local:web").Instances[0]; in.State != table.Draining {
		t.Errorf("local service in the table: %v, want draining", in.State)
	}

	// The agent loses the service (a restart without state) while vigil is down: at its next start
	// vigil registers it again, and in maintenance.
	r.stop()
	if err := c.Agent().ServiceDeregister(serviceID); err != nil {
		t.Fatal(err)
	}
	r = runApp(t, path)
	testutil.Eventually(t, 15*time.Second, 20*time.Millisecond, func() bool {
		st, notes := checkStatus(maintCheck)
		return st == api.HealthCritical && notes == "deploy 42"
	}, "maintenance put back after the registration")
	svcs, _, err := c.Health().Service("web", "", true, nil)
	if err != nil || len(svcs) != 0 {
		t.Errorf("passing instances of web in maintenance: %d, %v; want none", len(svcs), err)
	}

	if code := maint("disable", "local:web"); code != 0 {
		t.Fatalf("maint disable: exit %d", code)
	}
	if st, _ := checkStatus(maintCheck); st != "absent" {
		t.Errorf("maintenance check after disable: %s", st)
	}
	testutil.Eventually(t, 15*time.Second, 20*time.Millisecond, func() bool {
		svcs, _, err := c.Health().Service("web", "", true, nil)
		return err == nil && len(svcs) == 1
	}, "web passing again")
	if !strings.HasPrefix(r.a.table.Snapshot().Lookup("local:web").Instances[0].State.String(), "healthy") {
		t.Errorf("local service not healthy after disable")
	}
}
