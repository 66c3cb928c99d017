package deployments_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// The Nomad jobspec's blocks and attributes that vigil's job uses, with Nomad's names and types
// (github.com/hashicorp/nomad/api's hcl tags). Nomad's own parser (jobspec2) cannot be built
// from the Go module proxy (its api module is only reachable through a replace), so the job is
// decoded strictly into these: an unknown or misspelt block or attribute, or a wrong type, fails.
type nomadFile struct {
	Variables []struct {
		Name        string         `hcl:"name,label"`
		Type        hcl.Expression `hcl:"type,optional"`
		Default     hcl.Expression `hcl:"default,optional"`
		Description string         `hcl:"description,optional"`
	} `hcl:"variable,block"`
	Jobs []nomadJob `hcl:"job,block"`
}

type nomadJob struct {
	Name        string   `hcl:"name,label"`
	Datacenters []string `hcl:"datacenters,optional"`
	Type        string   `hcl:"type,optional"`
	Update      *struct {
		MaxParallel     int    `hcl:"max_parallel,optional"`
		MinHealthyTime  string `hcl:"min_healthy_time,optional"`
		HealthyDeadline string `hcl:"healthy_deadline,optional"`
		AutoRevert      bool   `hcl:"auto_revert,optional"`
	} `hcl:"update,block"`
	Groups []nomadGroup `hcl:"group,block"`
}

type nomadGroup struct {
	Name    string `hcl:"name,label"`
	Count   int    `hcl:"count,optional"`
	Network *struct {
		Mode  string `hcl:"mode,optional"`
		Ports []struct {
			Label  string `hcl:"label,label"`
			To     int    `hcl:"to,optional"`
			Static int    `hcl:"static,optional"`
		} `hcl:"port,block"`
	} `hcl:"network,block"`
	ShutdownDelay string `hcl:"shutdown_delay,optional"`
	Services      []struct {
		Name     string   `hcl:"name,optional"`
		Port     string   `hcl:"port,optional"`
		Provider string   `hcl:"provider,optional"`
		Tags     []string `hcl:"tags,optional"`
		Checks   []struct {
			Type     string `hcl:"type"`
			Path     string `hcl:"path,optional"`
			Interval string `hcl:"interval"`
			Timeout  string `hcl:"timeout"`
		} `hcl:"check,block"`
	} `hcl:"service,block"`
	Tasks []nomadTask `hcl:"task,block"`
}

type nomadTask struct {
	Name      string `hcl:"name,label"`
	Driver    string `hcl:"driver"`
	Lifecycle *struct {
		Hook    string `hcl:"hook"`
		Sidecar bool   `hcl:"sidecar,optional"`
	} `hcl:"lifecycle,block"`
	Config *struct {
		Image string   `hcl:"image"`
		Args  []string `hcl:"args,optional"`
		Ports []string `hcl:"ports,optional"`
	} `hcl:"config,block"`
	Templates []struct {
		Destination    string `hcl:"destination"`
		Data           string `hcl:"data,optional"`
		ChangeMode     string `hcl:"change_mode,optional"`
		ChangeSignal   string `hcl:"change_signal,optional"`
		LeftDelimiter  string `hcl:"left_delimiter,optional"`
		RightDelimiter string `hcl:"right_delimiter,optional"`
	} `hcl:"template,block"`
	Env *struct {
		Vars hcl.Body `hcl:",remain"`
	} `hcl:"env,block"`
	KillSignal  string `hcl:"kill_signal,optional"`
	KillTimeout string `hcl:"kill_timeout,optional"`
	Resources   *struct {
		CPU    int `hcl:"cpu,optional"`
		Memory int `hcl:"memory,optional"`
	} `hcl:"resources,block"`
}

// nomadRuntime are the runtime variables Nomad interpolates itself ("${NOMAD_TASK_DIR}"); any
// other name is an error, as an unknown var.* is.
var nomadRuntime = []string{"NOMAD_TASK_DIR", "NOMAD_ALLOC_DIR", "NOMAD_ALLOC_ID", "NOMAD_SECRETS_DIR", "NOMAD_DC", "NOMAD_JOB_NAME"}

// decodeNomad parses a job file and decodes it strictly; file() reads relative to the repository
// root, where the job is run from.
func decodeNomad(t *testing.T, path string) (*nomadFile, hcl.Diagnostics) {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	var vars struct {
		Variables []struct {
			Name    string   `hcl:"name,label"`
			Default hcl.Body `hcl:",remain"`
		} `hcl:"variable,block"`
		Rest hcl.Body `hcl:",remain"`
	}
	if diags := gohcl.DecodeBody(f.Body, nil, &vars); diags.HasErrors() {
		return nil, diags
	}
	defaults := map[string]cty.Value{}
	for _, v := range vars.Variables {
		attrs, _ := v.Default.JustAttributes()
		if a, ok := attrs["default"]; ok {
			val, diags := a.Expr.Value(nil)
			if diags.HasErrors() {
				return nil, diags
			}
			defaults[v.Name] = val
		}
	}
	ctx := &hcl.EvalContext{
		Variables: map[string]cty.Value{"var": cty.ObjectVal(defaults)},
		Functions: map[string]function.Function{"file": function.New(&function.Spec{
			Params: []function.Parameter{{Name: "path", Type: cty.String}},
			Type:   function.StaticReturnType(cty.String),
			Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
				data, err := os.ReadFile(filepath.Join(repoRoot, args[0].AsString()))
				return cty.StringVal(string(data)), err
			},
		})},
	}
	for _, n := range nomadRuntime {
		ctx.Variables[n] = cty.StringVal("${" + n + "}")
	}
	var job nomadFile
	return &job, gohcl.DecodeBody(f.Body, ctx, &job)
}

func TestNomadJob(t *testing.T) {
	f, diags := decodeNomad(t, "nomad/vigil.nomad.hcl")
	if diags.HasErrors() {
		t.Fatalf("nomad job: %v", diags)
	}
	if len(f.Jobs) != 1 || len(f.Jobs[0].Groups) != 1 {
		t.Fatalf("want one job with one group, got %+v", f.Jobs)
	}
	g := f.Jobs[0].Groups[0]
	if g.Network == nil || g.Network.Mode != "bridge" {
		t.Errorf("group network %+v: want bridge mode (tasks share loopback)", g.Network)
	}
	if len(g.Services) != 1 || g.Services[0].Provider != "consul" || len(g.Services[0].Checks) == 0 {
		t.Errorf("services %+v: want the app registered in Consul with a check", g.Services)
	}
	tasks := map[string]nomadTask{}
	var names []string
	for _, task := range g.Tasks {
		tasks[task.Name] = task
		names = append(names, task.Name)
	}
	if !slices.Equal(names, []string{"vigil", "envoy", "app"}) {
		t.Fatalf("tasks %q, want vigil, envoy, app", names)
	}
	v := tasks["vigil"]
	if v.Lifecycle == nil || v.Lifecycle.Hook != "prestart" || !v.Lifecycle.Sidecar || len(v.Templates) != 1 {
		t.Fatalf("vigil task: lifecycle %+v, %d templates: want a prestart sidecar with its configuration", v.Lifecycle, len(v.Templates))
	}
	if !slices.Equal(v.Config.Args, []string{"run", "-config", "${NOMAD_TASK_DIR}/vigil.yaml"}) || v.Templates[0].Destination != "local/vigil.yaml" {
		t.Errorf("vigil runs %q with its configuration at %s", v.Config.Args, v.Templates[0].Destination)
	}
	// The template's consul-template functions, as Nomad renders them on a node.
	rendered := regexp.MustCompile(`\{\{ env "([^"]+)" \}\}`).ReplaceAllStringFunc(v.Templates[0].Data, func(s string) string {
		switch {
		case strings.Contains(s, "NOMAD_DC"):
			return "dc1"
		case strings.Contains(s, "attr.unique.network.ip-address"):
			return "10.0.0.1"
		}
		t.Errorf("vigil template: unexpected %s", s)
		return s
	})
	cfg := parseVigil(t, "vigil task template", rendered, nil)
	if cfg.Consul.Address != "10.0.0.1:8500" {
		t.Errorf("consul.address %s, want the node's agent", cfg.Consul.Address)
	}
	kill, err := time.ParseDuration(v.KillTimeout)
	if err != nil || kill <= drainOf(t, cfg) {
		t.Errorf("vigil kill_timeout %q: want more than service.drain %v", v.KillTimeout, drainOf(t, cfg))
	}
	e := tasks["envoy"]
	if len(e.Templates) != 1 || e.Templates[0].Data != read(t, filepath.Join(repoRoot, "configs/envoy-bootstrap.yaml")) ||
		!slices.Contains(e.Config.Args, "${NOMAD_TASK_DIR}/envoy-bootstrap.yaml") {
		t.Errorf("envoy task: want configs/envoy-bootstrap.yaml rendered to local/ and passed with -c")
	}
}

// TestNomadJobCatchesErrors proves the decoding is strict: a copy with a misspelt attribute, a
// count that is not a number and an unknown runtime variable is refused at each.
func TestNomadJobCatchesErrors(t *testing.T) {
	_, diags := decodeNomad(t, "testdata/nomad.bad.hcl")
	var all []string
	for _, d := range diags {
		all = append(all, d.Error())
	}
	got := strings.Join(all, "\n")
	for _, want := range []string{
		`nomad.bad.hcl:32,14-19: Unsuitable value type; Unsuitable value: a number is required`,
		`An argument named "kill_timout" is not expected here. Did you mean "kill_timeout"?`,
		`There is no variable named "NOMAD_TASKDIR"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("not reported: %s\ngot: %s", want, got)
		}
	}
}
