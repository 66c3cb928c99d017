package deployments_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose loads a Compose file with compose-go, the Compose specification's reference loader:
// validation against the specification's JSON schema, interpolation, extends and merges.
func loadCompose(t *testing.T, path string) (*types.Project, error) {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		t.Fatal(err)
	}
	return loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  filepath.Dir(abs),
		ConfigFiles: []types.ConfigFile{{Filename: abs, Content: data}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) { o.SetProjectName("vigil-demo", true) })
}

func TestCompose(t *testing.T) {
	p, err := loadCompose(t, "compose/compose.yaml")
	if err != nil {
		t.Fatalf("compose-go: %v", err)
	}
	var servers []string
	for name, s := range p.Services {
		if strings.HasPrefix(s.Image, "hashicorp/consul:") && slices.Contains(s.Command, "-server") && slices.Contains(s.Command, "-bootstrap-expect=3") {
			servers = append(servers, name)
		}
	}
	if len(servers) != 3 {
		t.Errorf("Consul servers %q, want 3 with -bootstrap-expect=3", servers)
	}
	bootstrap := filepath.Join(repoRoot, "configs", "envoy-bootstrap.yaml")
	registered := map[string]int{}
	for _, inst := range []string{"web-1", "web-2", "api-1", "api-2"} {
		app, ok := p.Services[inst]
		if !ok {
			t.Errorf("no demo instance %s", inst)
			continue
		}
		ip := app.Networks["vigil"].Ipv4Address
		v, e := p.Services[inst+"-vigil"], p.Services[inst+"-envoy"]
		if v.NetworkMode != "service:"+inst || e.NetworkMode != "service:"+inst {
			t.Errorf("%s: vigil network_mode %q, envoy %q: want both in the instance's namespace", inst, v.NetworkMode, e.NetworkMode)
		}
		if v.StopGracePeriod == nil || len(v.Volumes) != 1 || !slices.Equal(v.Command, []string{"run", "-config", "/etc/vigil/vigil.yaml"}) {
			t.Errorf("%s-vigil: %+v", inst, v)
			continue
		}
		cfg := parseVigil(t, inst+"-vigil", read(t, v.Volumes[0].Source), nil)
		if cfg.Service.Address != ip || cfg.Service.Port != 8080 || !strings.HasPrefix(inst, cfg.Service.Name+"-") {
			t.Errorf("%s: vigil registers %s at %s:%d, want the instance at %s:8080", inst, cfg.Service.Name, cfg.Service.Address, cfg.Service.Port, ip)
		}
		registered[cfg.Service.Name]++
		if host, _, _ := strings.Cut(cfg.Consul.Address, ":"); !slices.Contains(servers, host) {
			t.Errorf("%s: consul.address %s is none of the servers %q", inst, cfg.Consul.Address, servers)
		}
		if grace := *v.StopGracePeriod; grace <= types.Duration(drainOf(t, cfg)) {
			t.Errorf("%s-vigil: stop_grace_period %v, want more than service.drain %v", inst, grace, drainOf(t, cfg))
		}
		if len(e.Volumes) != 1 || e.Volumes[0].Source != mustAbs(t, bootstrap) {
			t.Errorf("%s-envoy: volumes %+v, want configs/envoy-bootstrap.yaml", inst, e.Volumes)
		}
	}
	if registered["web"] != 2 || registered["api"] != 2 {
		t.Errorf("instances registered per service: %v, want web and api with 2 each", registered)
	}
}

// TestComposeCatchesErrors proves the loader validates: a copy with a misspelt healthcheck field
// is refused by the Compose schema.
func TestComposeCatchesErrors(t *testing.T) {
	_, err := loadCompose(t, "testdata/compose.bad.yaml")
	if err == nil || !strings.Contains(err.Error(), "intervall") {
		t.Errorf("compose-go on the broken copy: %v, want an error about intervall", err)
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
