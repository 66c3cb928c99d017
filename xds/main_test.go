package xds

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(benchChildEnv); mode != "" {
		os.Exit(runBenchChild(mode))
	}
	goleak.VerifyTestMain(m)
}

// runServer starts an xDS server for tb on 127.0.0.1:0 (it reports the bound address) and stops it when the test ends.
func runServer(t testing.TB, tb *table.Table, mod func(*Config)) (*Server, string, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.VersionFile = t.TempDir() + "/xds-version"
	if mod != nil {
		mod(&cfg)
	}
	reg := prometheus.NewRegistry()
	s, err := New(cfg, tb, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	run := testutil.Run(t, s, 5*time.Second)
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() bool {
		select {
		case <-run.Done():
			t.Fatalf("Run: %v", run.Err())
		default:
		}
		return s.Addr() != nil
	}, "xds server listening")
	return s, s.Addr().String(), reg
}

// addrInstances returns instances for the given host:port addresses, IDs i0, i1, ...
func addrInstances(addrs ...string) []discovery.Instance {
	out := make([]discovery.Instance, len(addrs))
	for i, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		p, _ := strconv.Atoi(port)
		out[i] = discovery.Instance{ID: fmt.Sprintf("i%d", i), Address: host, Port: p}
	}
	return out
}

func setState(tb *table.Table, upstream, id string, s health.State) {
	tb.SetStatus(discovery.Key{Upstream: upstream, ID: id}, health.Status{State: s, Since: time.Now()})
}
