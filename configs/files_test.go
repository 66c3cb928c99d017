package configs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-sidecar/vigil/configs"
)

// TestLoadChecksFiles: every file the configuration names is checked by Load (validate, reload),
// not first at start, and every missing one is listed; Parse alone reads no file.
func TestLoadChecksFiles(t *testing.T) {
	dir := t.TempDir()
	nope := filepath.Join(dir, "nope")
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600)
	yml := fmt.Sprintf(`
admin: {token_file: %[1]s.admin-token}
consul:
  enabled: true
  scheme: https
  token_file: %[1]s.token
  tls: {ca_file: %[1]s.ca, cert_file: %[1]s.crt, key_file: %[1]s.key}
xds:
  tls: {cert_file: %[1]s.crt, key_file: %[1]s.key, client_ca_file: %[2]s}
  version_file: %[1]s/dir/version
service:
  name: web
  port: 8080
  check: {kind: https, tls: {ca_file: %[1]s.service-ca}}
upstreams:
  - name: a
    check: {kind: https, tls: {ca_file: %[1]s.ca}}
    instances: [{address: 127.0.0.1, port: 1}]
`, nope, notPEM)
	if _, err := configs.Parse([]byte(yml)); err != nil {
		t.Fatalf("Parse reads no file, want no error, got:\n%v", err)
	}
	_, err := configs.Load([]byte(yml))
	if err == nil {
		t.Fatal("Load accepted missing files")
	}
	var paths []string
	for _, line := range strings.Split(err.Error(), "\n") {
		p, _, _ := strings.Cut(line, ": ")
		paths = append(paths, p)
	}
	want := []string{"upstreams[0].check.tls.ca_file", "service.check.tls.ca_file", "consul.tls.ca_file", "consul.tls", "consul.token_file",
		"admin.token_file", "xds.tls", "xds.tls.client_ca_file", "xds.version_file"}
	if !slices.Equal(paths, want) {
		t.Errorf("errors for fields %q, want %q:\n%v", paths, want, err)
	}
	if !strings.Contains(err.Error(), nope+".ca") || !strings.Contains(err.Error(), "no PEM certificate in "+notPEM) {
		t.Errorf("errors do not name the files:\n%v", err)
	}
}
