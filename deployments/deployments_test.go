// Package deployments_test keeps every file under deployments/ valid, each with its platform's own
// validator or parser: kubeconform, compose-go, BuildKit's Dockerfile parser, HCL and Nomad's job
// structure, promtool, systemd-analyze; vigil configurations inside them with configs.Parse.
package deployments_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// parseVigil parses a vigil configuration found in a deployment file, after replacing the
// placeholders a platform fills in at start (${NAME}) with the given values.
func parseVigil(t *testing.T, where, data string, vars map[string]string) *configs.Config {
	t.Helper()
	for k, v := range vars {
		data = strings.ReplaceAll(data, "${"+k+"}", v)
	}
	if i := strings.Index(data, "${"); i >= 0 {
		t.Fatalf("%s: placeholder left in the vigil configuration: %.40s", where, data[i:])
	}
	cfg, err := configs.Parse([]byte(data))
	if err != nil {
		t.Fatalf("%s: vigil configuration: %v", where, err)
	}
	return cfg
}

// run runs a tool from PATH (where `make test` puts .tools) and returns its combined output.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testutil.Need(t, name), args...)
	out, err := cmd.CombinedOutput()
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

// drainOf is service.drain, the time vigil takes to leave Consul on SIGTERM.
func drainOf(cfg *configs.Config) time.Duration { return cfg.Service.Drain }

var repoRoot = filepath.Join("..")
