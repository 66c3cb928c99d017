package table_test

import (
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// A snapshot carries the newest health state change the table took in: a new instance's first
// unknown is none, a status with the same state is none, and the change survives later snapshots.
func TestSnapshotChange(t *testing.T) {
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	k := discovery.Key{Upstream: "u", ID: "a"}
	mem := discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"u": {Name: "u", Instances: []discovery.Instance{{ID: "a", Address: "127.0.0.1", Port: 1}}},
	}}
	t0 := time.Now()
	tb.SetMembership(mem, map[discovery.Key]health.Status{k: {State: health.Unknown, Since: t0}})
	if c := tb.Snapshot().Change; c.Seq != 0 {
		t.Fatalf("change %+v after a first unknown, want none", c)
	}
	t1 := t0.Add(time.Second)
	tb.SetStatus(k, health.Status{State: health.Healthy, Since: t1})
	if c := tb.Snapshot().Change; c.Seq != 1 || !c.At.Equal(t1) {
		t.Fatalf("change %+v, want seq 1 at the status's Since", c)
	}
	tb.SetStatus(k, health.Status{State: health.Healthy, Reason: "other", Since: t1.Add(time.Second)})
	tb.SetMembership(mem, map[discovery.Key]health.Status{k: {State: health.Healthy, Since: t1}})
	if c := tb.Snapshot().Change; c.Seq != 1 || !c.At.Equal(t1) {
		t.Fatalf("change %+v after updates of the same state, want seq 1 kept", c)
	}
	t2 := t1.Add(2 * time.Second)
	tb.SetMembership(mem, map[discovery.Key]health.Status{k: {State: health.Unhealthy, Since: t2}})
	if c := tb.Snapshot().Change; c.Seq != 2 || !c.At.Equal(t2) {
		t.Fatalf("change %+v after a batch with a new state, want seq 2", c)
	}
}
