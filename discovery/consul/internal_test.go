package consul

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestBackoff(t *testing.T) {
	base, maxd := 100*time.Millisecond, 2*time.Second
	for n := 1; n <= 20; n++ {
		want := base << (n - 1)
		if n > 5 {
			want = maxd
		}
		want = min(want, maxd)
		for range 50 {
			d := backoff(base, maxd, n)
			if d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %s, want in [%s, %s]", n, d, want/2, want)
			}
		}
	}
}

func TestEndpoint(t *testing.T) {
	for path, want := range map[string]string{
		"/v1/health/service/api":             "/v1/health/service",
		"/v1/agent/check/update/vigil:web-1": "/v1/agent/check/update",
		"/v1/agent/service/register":         "/v1/agent/service/register",
		"/v1/agent/service/deregister/web-1": "/v1/agent/service/deregister",
		"/v1/agent/service/web-1":            "/v1/agent/service",
		"/v1/kv/x":                           "other",
	} {
		if got := endpoint(path); got != want {
			t.Errorf("endpoint(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestNextIndex(t *testing.T) {
	for _, c := range []struct{ prev, got, want uint64 }{
		{0, 10, 10}, {10, 10, 10}, {10, 12, 12}, {10, 5, 0}, {0, 0, 1}, {5, 0, 0},
	} {
		if got := nextIndex(c.prev, c.got); got != c.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", c.prev, c.got, got, c.want)
		}
	}
}

// TestNodeOnlyCritical: an instance whose only critical check is its node agent's serfHealth is
// node-critical (vigil's probe decides); any other critical check makes it critical.
func TestNodeOnlyCritical(t *testing.T) {
	serf := &api.HealthCheck{CheckID: "serfHealth", Status: api.HealthCritical}
	svcOK := &api.HealthCheck{CheckID: "svc", ServiceID: "api-1", Status: api.HealthPassing}
	svcBad := &api.HealthCheck{CheckID: "svc", ServiceID: "api-1", Status: api.HealthCritical}
	nodeBad := &api.HealthCheck{CheckID: "disk", Status: api.HealthCritical}
	for _, c := range []struct {
		checks api.HealthChecks
		want   bool
	}{
		{api.HealthChecks{serf, svcOK}, true},
		{api.HealthChecks{serf}, true},
		{api.HealthChecks{serf, svcBad}, false},
		{api.HealthChecks{serf, nodeBad}, false},
		{api.HealthChecks{svcBad}, false},
		{api.HealthChecks{svcOK}, false},
	} {
		if got := nodeOnlyCritical(c.checks); got != c.want {
			t.Errorf("%v: %v, want %v", c.checks, got, c.want)
		}
	}
}
