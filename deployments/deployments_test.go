// Package deployments_test keeps every file under deployments/ valid, each with its platform's own
// validator or parser: kubeconform, compose-go, BuildKit's Dockerfile parser, HCL and Nomad's job
// structure, promtool, systemd-analyze (vigil's configurations inside them: configs' tests).
package deployments_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// vigilConfig is what these tests read of a vigil configuration found in a deployment file. Its
// validity is checked by vigil's own parser in the main module (configs/deployments_test.go), so
// that this module does not build vigil: it only compares the file with its platform's settings.
type vigilConfig struct {
	Consul struct {
		Address string `yaml:"address"`
	} `yaml:"consul"`
	Service struct {
		Name    string `yaml:"name"`
		Address string `yaml:"address"`
		Port    int    `yaml:"port"`
		Drain   string `yaml:"drain"`
	} `yaml:"service"`
}

// parseVigil reads a vigil configuration found in a deployment file, after replacing the
// placeholders a platform fills in at start (${NAME}) with the given values.
func parseVigil(t *testing.T, where, data string, vars map[string]string) *vigilConfig {
	t.Helper()
	for k, v := range vars {
		data = strings.ReplaceAll(data, "${"+k+"}", v)
	}
	if i := strings.Index(data, "${"); i >= 0 {
		t.Fatalf("%s: placeholder left in the vigil configuration: %.40s", where, data[i:])
	}
	var cfg vigilConfig
	if err := yaml.Unmarshal([]byte(data), &cfg); err != nil {
		t.Fatalf("%s: vigil configuration: %v", where, err)
	}
	return &cfg
}

// drainOf is service.drain (default 10s), the time vigil takes to leave Consul on SIGTERM.
func drainOf(t *testing.T, cfg *vigilConfig) time.Duration {
	t.Helper()
	if cfg.Service.Drain == "" {
		return 10 * time.Second
	}
	d, err := time.ParseDuration(cfg.Service.Drain)
	if err != nil {
		t.Fatalf("service.drain: %v", err)
	}
	return d
}

// need returns the path of a program in PATH (where `make test` puts .tools). Without it the
// test is skipped, or, in CI (CI=true), fails; as vigil's testutil.Need.
func need(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found in PATH (run the tests through `make test`, which installs it): %v", name, err)
	}
	t.Skipf("%s not found in PATH; `make test` installs it", name)
	return ""
}

// run runs a tool from PATH and returns its combined output.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(need(t, name), args...).CombinedOutput()
	return string(out), err
}

func read(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

const repoRoot = ".."
