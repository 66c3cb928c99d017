package consul

import (
	"testing"
	"time"
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
