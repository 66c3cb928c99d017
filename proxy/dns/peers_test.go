package dns_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// startCoreDNS serves the benchmark's records from a zone file with CoreDNS's file plugin.
func startCoreDNS(b *testing.B, bin, dir string) *peer {
	b.Helper()
	var z strings.Builder
	z.WriteString("$ORIGIN consul.\n@ 5 IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 5\n@ 5 IN NS ns.consul.\nns 5 IN A 127.0.0.1\n")
	for s, name := range benchServices {
		for i := range benchInstances {
			ip := benchIP(s, i)
			hex := fmt.Sprintf("%x", netip.MustParseAddr(ip).AsSlice())
			fmt.Fprintf(&z, "%s.service 5 IN A %s\n", name, ip)
			fmt.Fprintf(&z, "%s.service 5 IN SRV 1 1 %d %s.addr.dc1\n", name, benchPort(s, i), hex)
			fmt.Fprintf(&z, "%s.addr.dc1 5 IN A %s\n", hex, ip)
		}
	}
	zone := filepath.Join(dir, "db.consul")
	port := testutil.FreePort(b)
	corefile := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(zone, []byte(z.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	conf := fmt.Sprintf("consul.:%d {\n  bind 127.0.0.1\n  file %s\n}\n", port, zone)
	if err := os.WriteFile(corefile, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	return startPeer(b, "coredns", port, exec.Command(bin, "-conf", corefile))
}

// startConsul runs a Consul dev agent on free loopback ports and registers the benchmark's
// services through the agent API.
func startConsul(b *testing.B, bin, dir string) *peer {
	b.Helper()
	ports := map[string]int{}
	for _, k := range []string{"dns", "http", "grpc", "grpc_tls", "serf_lan", "serf_wan", "server"} {
		ports[k] = testutil.FreePort(b)
	}
	hcl := fmt.Sprintf(`ports { dns = %d
http = %d
grpc = %d
grpc_tls = %d
serf_lan = %d
serf_wan = %d
server = %d }
dns_config {
udp_answer_limit = 64
enable_additional_node_meta_txt = false
}
log_level = "error"`, ports["dns"], ports["http"], ports["grpc"], ports["grpc_tls"], ports["serf_lan"], ports["serf_wan"], ports["server"])
	cmd := exec.Command(bin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1", "-node", "bench", "-hcl", hcl)
	cmd.Dir = dir
	p := launch(b, "consul", ports["dns"], cmd)
	cfg := api.DefaultConfig()
	cfg.Address = fmt.Sprintf("127.0.0.1:%d", ports["http"])
	c, err := api.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	testutil.Eventually(b, time.Minute, 100*time.Millisecond, func() bool {
		l, err := c.Status().Leader()
		return err == nil && l != ""
	}, "consul has no leader")
	for s, name := range benchServices {
		for i := range benchInstances {
			reg := &api.AgentServiceRegistration{ID: fmt.Sprintf("%s-%d", name, i), Name: name, Address: benchIP(s, i), Port: benchPort(s, i)}
			if err := c.Agent().ServiceRegister(reg); err != nil {
				b.Fatalf("consul: register %s: %v", reg.ID, err)
			}
		}
	}
	waitAnswers(b, p)
	return p
}
