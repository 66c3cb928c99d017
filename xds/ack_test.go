package xds

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

func changeToAckCount(t *testing.T, s *Server) uint64 {
	t.Helper()
	var m dto.Metric
	if err := s.m.changeToAck.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// gRPC-Go's own xDS client acknowledges the push of each health state change once: one
// observation per change in vigil_xds_change_to_ack_seconds, none for the state it connected to.
func TestChangeToAck(t *testing.T) {
	bs := []*backend{startBackend(t), startBackend(t), startBackend(t)}
	tb := newTable("", table.DefaultPolicy(), map[string][]discovery.Instance{"api": addrInstances(bs[0].addr, bs[1].addr, bs[2].addr)}, nil)
	s, addr, _ := runServer(t, tb, nil)
	cc := xdsClient(t, addr, "api")
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		got := spread(t, cc, 30)
		return got[bs[0].addr] > 0 && got[bs[1].addr] > 0 && got[bs[2].addr] > 0
	}, "calls spread over all three backends")
	if n := changeToAckCount(t, s); n != 0 {
		t.Fatalf("%d observations before any change, want 0", n)
	}

	setState(tb, "api", "i0", health.Unhealthy)
	testutil.Eventually(t, 10*time.Second, 2*time.Millisecond, func() bool { return changeToAckCount(t, s) >= 1 }, "the change acknowledged")
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		return spread(t, cc, 10)[bs[0].addr] == 0
	}, "no call to the unhealthy backend")

	// A rebuild without a state change (a new reason) is pushed but observes nothing; the client
	// acknowledges in order, so once the next change is observed every earlier ACK was seen.
	tb.SetStatus(discovery.Key{Upstream: "api", ID: "i1"}, health.Status{State: health.Healthy, Reason: "same state", Since: time.Now()})
	setState(tb, "api", "i0", health.Healthy)
	testutil.Eventually(t, 10*time.Second, 2*time.Millisecond, func() bool { return changeToAckCount(t, s) >= 2 }, "the second change acknowledged")
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		return spread(t, cc, 10)[bs[0].addr] > 0
	}, "calls to the revived backend")
	if n := changeToAckCount(t, s); n != 2 {
		t.Fatalf("%d observations after two changes, want 2", n)
	}
}
