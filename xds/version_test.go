package xds

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/vigil-sidecar/vigil/proxy/health"
)

func TestEpochMonotonicAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "version")
	now := time.Unix(1000, 0)
	e1, err := nextEpoch(path, now)
	if err != nil || e1 != 1000 {
		t.Fatalf("first epoch %d, %v", e1, err)
	}
	// A restart in the same second, or with the clock set back, still moves forward.
	e2, _ := nextEpoch(path, now)
	e3, _ := nextEpoch(path, now.Add(-time.Hour))
	if e2 != 1001 || e3 != 1002 {
		t.Fatalf("epochs %d, %d after %d", e2, e3, e1)
	}
	if e4, _ := nextEpoch(path, time.Unix(5000, 0)); e4 != 5000 {
		t.Fatalf("epoch %d after the clock moved on", e4)
	}
	if e, _ := nextEpoch("", time.Unix(7, 0)); e != 7 {
		t.Fatalf("time-based epoch %d", e)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := nextEpoch(path, now); err == nil {
		t.Fatal("no error for a corrupt version file")
	}
}

// TestVersionsAcrossRestarts: a server started again on the same version file serves
// versions after every version of the previous run.
func TestVersionsAcrossRestarts(t *testing.T) {
	file := filepath.Join(t.TempDir(), "version")
	first := func() string {
		tb := threeUpstreams()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var v string
		t.Run("run", func(t *testing.T) {
			_, addr, _ := runServer(t, tb, func(c *Config) { c.VersionFile = file })
			st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, addr)).StreamAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType})
			r := recv(t, st.Recv)
			// Many changes in this run: the next run must still be ahead.
			for i := range 51 { // an odd number: a/i0 ends unhealthy, a change to send
				setState(tb, "a", "i0", []health.State{health.Unhealthy, health.Healthy}[i%2])
			}
			st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
			v = recv(t, st.Recv).VersionInfo
			cancel()
		})
		return v
	}
	v1, v2 := first(), first()
	if !versionLess(t, v1, v2) {
		t.Fatalf("version %q after a restart is not after %q", v2, v1)
	}
}
