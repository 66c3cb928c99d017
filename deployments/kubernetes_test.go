package deployments_test

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// kubeconform validates files against the strict schemas `make tools` writes next to it
// (.tools/k8s-schemas, from Kubernetes' OpenAPI documents, see kubeschema) and returns its report.
func kubeconform(t *testing.T, files ...string) kubeReport {
	t.Helper()
	bin := need(t, "kubeconform")
	schemas := filepath.Join(filepath.Dir(bin), "k8s-schemas")
	if _, err := os.Stat(filepath.Join(schemas, "deployment-apps-v1.json")); err != nil {
		t.Fatalf("no Kubernetes schemas next to %s (`make tools` writes them): %v", bin, err)
	}
	// No -ignore-missing-schemas: a kind without a schema is an error, never skipped.
	args := append([]string{"-strict", "-summary", "-output", "json",
		"-schema-location", filepath.Join(schemas, "{{.ResourceKind}}{{.KindSuffix}}.json")}, files...)
	out, _ := run(t, "kubeconform", args...)
	var r kubeReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("kubeconform output: %v\n%s", err, out)
	}
	return r
}

type kubeReport struct {
	Resources []struct {
		Filename, Kind, Name, Status, Msg string
	} `json:"resources"`
	Summary struct{ Valid, Invalid, Errors, Skipped int } `json:"summary"`
}

func TestKubernetesSchemas(t *testing.T) {
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in kubernetes/")
	}
	r := kubeconform(t, files...)
	docs := 0
	for _, f := range files {
		docs += len(kubeDocs(t, f))
	}
	if r.Summary.Valid != docs || r.Summary.Invalid+r.Summary.Errors+r.Summary.Skipped != 0 {
		t.Errorf("kubeconform: %+v for %d resources:\n%+v", r.Summary, docs, r.Resources)
	}
}

// TestKubernetesSchemasCatchErrors proves the validator is real: a copy of the manifest with a
// misspelt field, a wrong type and an unknown probe field is refused, at each place.
func TestKubernetesSchemasCatchErrors(t *testing.T) {
	r := kubeconform(t, "testdata/kubernetes.bad.yaml")
	if r.Summary.Invalid != 1 || r.Summary.Valid != 3 {
		t.Fatalf("kubeconform on the broken copy: %+v, want 1 invalid and 3 valid", r.Summary)
	}
	var msg string
	for _, res := range r.Resources {
		if res.Status == "statusInvalid" {
			msg = res.Msg
		}
	}
	for _, want := range []string{
		"'/spec/replicas': got string, want integer",
		"'/spec/template/spec': additional properties 'terminationGracePeriod' not allowed",
		"readinessProbe': additional properties 'periodSecond' not allowed",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("kubeconform does not report %q:\n%s", want, msg)
		}
	}
}

type kubeObject struct {
	Kind     string                `yaml:"kind"`
	Metadata struct{ Name string } `yaml:"metadata"`
	Data     map[string]string     `yaml:"data"`
	Spec     struct {
		Template struct {
			Spec struct {
				TerminationGracePeriodSeconds int64           `yaml:"terminationGracePeriodSeconds"`
				InitContainers                []kubeContainer `yaml:"initContainers"`
				Containers                    []kubeContainer `yaml:"containers"`
				Volumes                       []struct {
					Name      string
					ConfigMap *struct{ Name string } `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type kubeContainer struct {
	Name           string
	Image          string
	Args           []string
	LivenessProbe  *kubeProbe `yaml:"livenessProbe"`
	ReadinessProbe *kubeProbe `yaml:"readinessProbe"`
	Lifecycle      struct {
		PreStop *kubeProbe `yaml:"preStop"`
	}
	VolumeMounts []struct {
		Name      string
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type kubeProbe struct {
	Exec *struct{ Command []string } `yaml:"exec"`
}

func kubeDocs(t *testing.T, path string) []kubeObject {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var objs []kubeObject
	for {
		var o kubeObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		objs = append(objs, o)
	}
}

// TestKubernetesPod checks what the schemas cannot: vigil's configuration is valid, Envoy's
// bootstrap is configs/envoy-bootstrap.yaml, the probes ask vigil for /healthz and /readyz, and
// the pod has time to drain.
func TestKubernetesPod(t *testing.T) {
	objs := kubeDocs(t, "kubernetes/vigil.yaml")
	byName := map[string]kubeObject{}
	for _, o := range objs {
		byName[o.Kind+"/"+o.Metadata.Name] = o
	}
	cm, ok := byName["ConfigMap/checkout-vigil"]
	if !ok {
		t.Fatal("no ConfigMap checkout-vigil")
	}
	cfg := parseVigil(t, "ConfigMap checkout-vigil", cm.Data["vigil.yaml"], map[string]string{"HOST_IP": "10.0.0.1", "POD_IP": "10.1.2.3"})
	if cfg.Consul.Address != "10.0.0.1:8500" || cfg.Service.Address != "10.1.2.3" {
		t.Errorf("consul.address %q, service.address %q: want the node's agent and the pod's address", cfg.Consul.Address, cfg.Service.Address)
	}
	if got, want := byName["ConfigMap/envoy-bootstrap"].Data["envoy-bootstrap.yaml"], read(t, filepath.Join(repoRoot, "configs/envoy-bootstrap.yaml")); got != want {
		t.Error("ConfigMap envoy-bootstrap differs from configs/envoy-bootstrap.yaml; copy it again")
	}
	dep, ok := byName["Deployment/checkout"]
	if !ok {
		t.Fatal("no Deployment checkout")
	}
	pod := dep.Spec.Template.Spec
	containers := map[string]kubeContainer{}
	var names []string
	for _, c := range pod.Containers {
		containers[c.Name] = c
		names = append(names, c.Name)
	}
	if !slices.Equal(names, []string{"app", "vigil", "envoy"}) {
		t.Errorf("containers %q, want app, vigil, envoy", names)
	}
	v := containers["vigil"]
	for _, p := range []struct {
		probe *kubeProbe
		path  string
	}{{v.LivenessProbe, "/healthz"}, {v.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.Exec == nil || !slices.Equal(p.probe.Exec.Command, []string{"/vigil", "health", "-path", p.path}) {
			t.Errorf("vigil probe for %s: %+v, want exec /vigil health -path %s", p.path, p.probe, p.path)
		}
	}
	if !slices.Equal(v.Args, []string{"run", "-config", "/etc/vigil/vigil.yaml"}) {
		t.Errorf("vigil args %q", v.Args)
	}
	drain := drainOf(t, cfg)
	grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second
	if grace <= drain+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v: want more than service.drain %v plus 5s", grace, drain)
	}
	for _, name := range []string{"app", "envoy"} {
		ps := containers[name].Lifecycle.PreStop
		if ps == nil || ps.Exec == nil || len(ps.Exec.Command) != 2 || ps.Exec.Command[0] != "sleep" {
			t.Errorf("%s: preStop %+v, want a sleep that outlasts the drain", name, ps)
			continue
		}
		d, err := time.ParseDuration(ps.Exec.Command[1] + "s")
		if err != nil || d <= drain || d >= grace {
			t.Errorf("%s: preStop sleeps %s: want more than service.drain %v and less than the grace period %v", name, ps.Exec.Command[1], drain, grace)
		}
	}
	e := containers["envoy"]
	if !slices.Contains(e.Args, "/etc/envoy/envoy-bootstrap.yaml") || len(e.VolumeMounts) == 0 || e.VolumeMounts[0].MountPath != "/etc/envoy" {
		t.Errorf("envoy: args %q, mounts %+v: want the bootstrap from /etc/envoy", e.Args, e.VolumeMounts)
	}
}
