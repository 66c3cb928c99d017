package dns_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
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
	corefile := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(zone, []byte(z.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return startOnPorts(b, "coredns", 1, func(ports []int) (*peer, bool) {
		conf := fmt.Sprintf("consul.:%d {\n  bind 127.0.0.1\n  file %s\n}\n", ports[0], zone)
		if err := os.WriteFile(corefile, []byte(conf), 0o644); err != nil {
			b.Fatal(err)
		}
		p := launch(b, "coredns", ports[0], exec.Command(bin, "-conf", corefile))
		return p, answers(p, 30*time.Second)
	})
}

// startOnPorts starts a third-party peer that can neither be handed a listener nor report the
// port it binds: it picks n distinct loopback ports (each held until all are picked), starts the
// peer on them, and if it does not come up (another process took a port in between), stops it
// and tries again on new ports, three times at most.
func startOnPorts(b *testing.B, name string, n int, start func(ports []int) (*peer, bool)) *peer {
	b.Helper()
	for range 3 {
		var held []net.Listener
		var ports []int
		for range n {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			held = append(held, l)
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		for _, l := range held {
			l.Close()
		}
		p, ok := start(ports)
		if ok {
			return p
		}
		b.Logf("%s did not come up on ports %v: trying others", name, ports)
		p.cmd.Process.Kill()
	}
	b.Fatalf("%s did not come up in 3 tries", name)
	return nil
}

// startConsul runs a Consul dev agent on loopback ports (startOnPorts) and registers the benchmark's
// services through the agent API.
func startConsul(b *testing.B, bin, dir string) *peer {
	b.Helper()
	keys := []string{"dns", "http", "grpc", "grpc_tls", "serf_lan", "serf_wan", "server"}
	var c *api.Client
	p := startOnPorts(b, "consul", len(keys), func(list []int) (*peer, bool) {
		ports := map[string]int{}
		for i, k := range keys {
			ports[k] = list[i]
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
		var err error
		if c, err = api.NewClient(cfg); err != nil {
			b.Fatal(err)
		}
		deadline := time.After(time.Minute)
		for {
			if l, err := c.Status().Leader(); err == nil && l != "" {
				return p, true
			}
			select {
			case <-deadline:
				return p, false
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
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
