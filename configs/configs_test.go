package configs_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/configs"
)

func TestEmbeddedDefault(t *testing.T) {
	cfg, err := configs.Parse(configs.Default)
	if err != nil {
		t.Fatalf("embedded default: %v", err)
	}
	if len(cfg.Upstreams) == 0 {
		t.Fatal("embedded default has no upstreams")
	}
	web := cfg.Upstreams[0]
	if web.Check.Kind != "http" || web.Check.HTTP.Path != "/healthz" || web.Check.HTTP.Method != "GET" {
		t.Errorf("web check = %+v: want kind http, path /healthz, inherited method GET", web.Check)
	}
	if web.Check.Interval != time.Second || !web.ZonePreference || web.PanicMode != "fail_open" {
		t.Errorf("web: inheritance from defaults broken: %+v", web)
	}
}

// TestFiles parses testdata/*.good.yaml and the shipped deployments/*.yaml (must pass), and
// testdata/*.bad.yaml, whose "# want: " lines list every expected error message, in order.
func TestFiles(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.yaml")
	deployments, _ := filepath.Glob("../deployments/*.yaml")
	if len(files) == 0 || len(deployments) == 0 {
		t.Fatal("no testdata or no deployment configs")
	}
	files = append(files, deployments...)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, line := range strings.Split(string(data), "\n") {
				if w, ok := strings.CutPrefix(line, "# want: "); ok {
					want = append(want, w)
				}
			}
			_, err = configs.Parse(data)
			if !strings.HasSuffix(f, ".bad.yaml") {
				if err != nil {
					t.Fatalf("want no error, got:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want errors %q, got none", want)
			}
			got := strings.Split(err.Error(), "\n")
			if !slices.Equal(got, want) {
				t.Errorf("errors:\n got: %q\nwant: %q", got, want)
			}
		})
	}
}

func TestInheritanceDoesNotShareMaps(t *testing.T) {
	cfg, err := configs.Parse([]byte(`
defaults:
  check: {kind: http, http: {headers: {X-A: "1"}}}
upstreams:
  - name: a
    check: {http: {headers: {X-B: "2"}}}
    instances: [{address: 127.0.0.1, port: 1}]
  - name: b
    instances: [{address: 127.0.0.1, port: 2}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if h := cfg.Upstreams[0].Check.HTTP.Headers; len(h) != 2 {
		t.Errorf("a headers = %v, want X-A and X-B", h)
	}
	if h := cfg.Upstreams[1].Check.HTTP.Headers; len(h) != 1 {
		t.Errorf("b headers = %v, want only X-A", h)
	}
	if cfg.Upstreams[1].Check.Kind != "http" {
		t.Errorf("b kind = %q, want inherited http", cfg.Upstreams[1].Check.Kind)
	}
}

func TestDNSConfig(t *testing.T) {
	cfg, err := configs.Parse([]byte(`
node: {datacenter: east}
defaults:
  dns: {ttl: 10s}
dns: {domain: vigil., alt_domain: consul.}
upstreams:
  - name: a
    dns: {ttl: 1s}
    instances: [{address: 127.0.0.1, port: 1}]
  - name: b
    instances: [{address: 127.0.0.1, port: 2}]
`))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.DNSConfig()
	if d.Datacenter != "east" || d.TTL != 10*time.Second || d.TTLs["a"] != time.Second || d.TTLs["b"] != 10*time.Second {
		t.Errorf("DNSConfig = %+v: want datacenter east, default ttl 10s, a 1s, b inherited 10s", d)
	}
	if d.Domain != "vigil." || d.Listen != "127.0.0.1:8600" {
		t.Errorf("DNSConfig = %+v: want domain vigil., default listen", d)
	}
}

// A forward block gets the forwarder's defaults for what it leaves out; upstreams without one
// get no forwarder.
func TestForwardDefaults(t *testing.T) {
	cfg, err := configs.Parse([]byte(`
upstreams:
  - name: a
    forward: {listen: 127.0.0.1:15001, drain: 5s}
    instances: [{address: 127.0.0.1, port: 1}]
  - name: b
    instances: [{address: 127.0.0.1, port: 2}]
`))
	if err != nil {
		t.Fatal(err)
	}
	fw := cfg.Forwards()
	if len(fw) != 1 {
		t.Fatalf("forwards %v: want only a", fw)
	}
	a := fw["a"]
	if a.Listen != "127.0.0.1:15001" || a.Drain != 5*time.Second || a.ConnectTimeout != time.Second ||
		a.MaxAttempts != 3 || a.MaxConnections != 1024 || a.MaxEjectionPercent != 50 {
		t.Errorf("a: %+v", a)
	}
}
