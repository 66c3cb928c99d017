package configs_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/vigil-sidecar/vigil/configs"
)

// TestDeploymentConfigs parses, with vigil's own parser, every vigil configuration shipped inside
// a deployment file (deployments/*.yaml are in TestFiles): the Kubernetes ConfigMaps, the Compose
// files' vigil-*.yaml, the Nomad job's template, each as the platform renders it. The platform
// files themselves are checked by deployments' tests (a module of their own).
func TestDeploymentConfigs(t *testing.T) {
	found := map[string]string{}
	manifests, _ := filepath.Glob("../deployments/kubernetes/*.yaml")
	for _, m := range manifests {
		f, err := os.Open(m)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(f)
		for {
			var doc struct {
				Kind     string
				Metadata struct{ Name string }
				Data     map[string]string
			}
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", m, err)
			}
			if doc.Kind == "ConfigMap" && doc.Data["vigil.yaml"] != "" {
				// The init container fills in the node's and the pod's addresses.
				r := strings.NewReplacer("${HOST_IP}", "10.0.0.1", "${POD_IP}", "10.1.2.3")
				found[m+": ConfigMap "+doc.Metadata.Name] = r.Replace(doc.Data["vigil.yaml"])
			}
		}
		f.Close()
	}
	compose, _ := filepath.Glob("../deployments/compose/vigil-*.yaml")
	for _, c := range compose {
		found[c] = readFile(t, c)
	}
	jobs, _ := filepath.Glob("../deployments/nomad/*.hcl")
	heredoc := regexp.MustCompile(`(?s)destination\s*=\s*"local/vigil.yaml".*?<<-EOT\n(.*?)\n\s*EOT\n`)
	env := regexp.MustCompile(`\{\{ env "([^"]+)" \}\}`)
	for _, j := range jobs {
		m := heredoc.FindStringSubmatch(readFile(t, j))
		if m == nil {
			t.Errorf("%s: no vigil.yaml template", j)
			continue
		}
		// <<-EOT strips the common indentation; consul-template fills in env (node attributes).
		lines := strings.Split(m[1], "\n")
		indent := len(lines[0]) - len(strings.TrimLeft(lines[0], " "))
		for i, l := range lines {
			if len(l) >= indent {
				lines[i] = l[indent:]
			}
		}
		found[j] = env.ReplaceAllStringFunc(strings.Join(lines, "\n"), func(s string) string {
			switch env.FindStringSubmatch(s)[1] {
			case "NOMAD_DC":
				return "dc1"
			case "attr.unique.network.ip-address":
				return "10.0.0.1"
			}
			t.Errorf("%s: unexpected %s in the vigil template", j, s)
			return s
		})
	}
	if len(found) < 6 {
		t.Fatalf("found %d vigil configurations in deployments/, want the Kubernetes, Compose and Nomad ones", len(found))
	}
	for where, data := range found {
		if strings.Contains(data, "${") {
			t.Errorf("%s: placeholder left", where)
		}
		cfg, err := configs.Parse([]byte(data))
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if !cfg.Consul.Enabled || cfg.Admin.Listen != "127.0.0.1:9480" {
			t.Errorf("%s: want Consul on and the admin API on 127.0.0.1:9480 (where vigil health looks)", where)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
