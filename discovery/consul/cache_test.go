package consul_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
)

// recorder is a reverse proxy in front of the agent that records every query string and the
// backend that answered it (X-Consul-Query-Backend).
type recorder struct {
	mu       sync.Mutex
	queries  []string
	backends map[string]int
}

func (r *recorder) start(t *testing.T, agentAddr string) string {
	t.Helper()
	r.backends = map[string]int{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: agentAddr})
	rp.ModifyResponse = func(resp *http.Response) error {
		r.mu.Lock()
		r.backends[resp.Header.Get("X-Consul-Query-Backend")]++
		r.mu.Unlock()
		return nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.HasPrefix(req.URL.Path, "/v1/health/service/") {
			r.mu.Lock()
			r.queries = append(r.queries, req.URL.RawQuery)
			r.mu.Unlock()
		}
		rp.ServeHTTP(w, req)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func (r *recorder) snapshot() ([]string, map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := map[string]int{}
	for k, v := range r.backends {
		b[k] = v
	}
	return append([]string(nil), r.queries...), b
}

// An agent with its streaming backend (Consul's default) answers blocking queries from its
// materialized view, with X-Consul-KnownLeader false: the watch must take that answer, not follow
// each one with a consistent read. With use_cache, every blocking query is ?cached (the first
// read is not), and every change still arrives.
func TestWatchStreamingAndCache(t *testing.T) {
	for _, useCache := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "use_cache"}[useCache]
		t.Run(name, func(t *testing.T) {
			a := newAgent(t, agentOpts{})
			a.start(true)
			a.register("web", "web-1", 8080, "passing", nil)
			var rec recorder
			cfg := a.vigilConfig()
			cfg.Address = rec.start(t, a.addr())
			cfg.UseCache = useCache
			cfg.MinInterval = 0
			cl, err := consul.NewClient(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			d, err := consul.NewDiscovery(consul.Options{Config: cfg, Upstreams: map[string]consul.Upstream{"web": {}}, Client: cl})
			if err != nil {
				t.Fatal(err)
			}
			up := make(chan []discovery.Group, 16)
			run(t, func(ctx context.Context) { d.Run(ctx, up) })
			wait := func(want discovery.Health) {
				t.Helper()
				for {
					select {
					case gs := <-up:
						for _, g := range gs {
							if g.Upstream == "web" && len(g.Instances) == 1 && g.Instances[0].Health == want {
								return
							}
						}
					case <-time.After(30 * time.Second):
						t.Fatalf("no group with web-1 %v within 30s", want)
					}
				}
			}
			wait(discovery.Passing)
			for _, st := range []struct {
				status string
				want   discovery.Health
			}{{"critical", discovery.Critical}, {"passing", discovery.Passing}, {"critical", discovery.Critical}} {
				a.setCheck("web-1", st.status)
				wait(st.want)
			}
			qs, backends := rec.snapshot()
			if backends["streaming"] == 0 {
				t.Fatalf("no answer came from the agent's streaming backend: %v", backends)
			}
			for i, q := range qs {
				if strings.Contains(q, "consistent") {
					t.Errorf("query %d of %d is a consistent read after a streamed answer: %s", i+1, len(qs), q)
				}
				first := !strings.Contains(q, "index=") || strings.Contains(q, "index=0&")
				if cached := strings.Contains(q, "cached"); cached != (useCache && !first) {
					t.Errorf("query %d ?cached is %v, want %v (use_cache %v, first read %v): %s", i+1, cached, useCache && !first, useCache, first, q)
				}
			}
		})
	}
}
