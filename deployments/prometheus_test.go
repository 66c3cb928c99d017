package deployments_test

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	promql "github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"
)

// vigilMetrics reads vigil's metric names from its Go sources: the Name of every
// prometheus.{Counter,Gauge,Histogram,Summary}Opts literal and the first argument of every
// prometheus.NewDesc. Histograms and summaries also have their _bucket, _sum and _count series.
func vigilMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", ".tools", ".work", "testdata", "deployments", "node_modules":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				sel, ok := n.Type.(*ast.SelectorExpr)
				if !ok || !strings.HasSuffix(sel.Sel.Name, "Opts") {
					return true
				}
				for _, e := range n.Elts {
					if kv, ok := e.(*ast.KeyValueExpr); ok && isIdent(kv.Key, "Name") {
						if name, ok := stringLit(kv.Value); ok && strings.HasPrefix(name, "vigil_") {
							names[name] = true
							if sel.Sel.Name == "HistogramOpts" || sel.Sel.Name == "SummaryOpts" {
								names[name+"_sum"], names[name+"_count"] = true, true
							}
							if sel.Sel.Name == "HistogramOpts" {
								names[name+"_bucket"] = true
							}
						}
					}
				}
			case *ast.CallExpr:
				if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewDesc" && len(n.Args) > 0 {
					if name, ok := stringLit(n.Args[0]); ok && strings.HasPrefix(name, "vigil_") {
						names[name] = true
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"vigil_table_instances", "vigil_health_probes_total", "vigil_xds_push_latency_seconds_bucket", "vigil_consul_staleness_seconds"} {
		if !names[must] {
			t.Fatalf("reading vigil's metrics from its sources found no %s (found %d names)", must, len(names))
		}
	}
	return names
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// promQL is Prometheus' own PromQL parser with its default functions.
var promQL = promql.NewParser(promql.Options{})

// grafanaVars stand in for Grafana's variables so that an expression parses as PromQL.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "${__rate_interval}", "5m", "$__interval", "1m", "$__range", "1h",
	"$job", ".*", "${job}", ".*", "$instance", ".*", "${instance}", ".*")

// checkPromQL parses expr with Prometheus' own parser and returns a problem for a parse error
// and for every metric name vigil does not export.
func checkPromQL(where, expr string, metrics map[string]bool) []string {
	e, err := promQL.ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		return []string{where + ": " + err.Error()}
	}
	var problems []string
	promql.Inspect(e, func(n promql.Node, _ []promql.Node) error {
		if vs, ok := n.(*promql.VectorSelector); ok {
			name := vs.Name
			if name == "" {
				for _, m := range vs.LabelMatchers {
					if m.Name == "__name__" {
						name = m.Value
					}
				}
			}
			if !metrics[name] {
				problems = append(problems, where+": vigil has no metric "+strconv.Quote(name))
			}
		}
		return nil
	})
	return problems
}

type grafanaPanel struct {
	ID      int            `json:"id"`
	Type    string         `json:"type"`
	Title   string         `json:"title"`
	Panels  []grafanaPanel `json:"panels"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// checkDashboard returns every problem of a Grafana dashboard: JSON, panel ids, panels without
// queries, PromQL that does not parse or names a metric vigil does not have. It also returns the
// metric names used.
func checkDashboard(t *testing.T, path string, metrics map[string]bool) (problems []string, used map[string]bool) {
	t.Helper()
	var d struct {
		UID        string         `json:"uid"`
		Title      string         `json:"title"`
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal([]byte(read(t, path)), &d); err != nil {
		return []string{"JSON: " + err.Error()}, nil
	}
	if d.UID == "" || d.Title == "" {
		problems = append(problems, "dashboard without uid or title")
	}
	used = map[string]bool{}
	ids := map[int]bool{}
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if ids[p.ID] {
				problems = append(problems, "panel id "+strconv.Itoa(p.ID)+" used twice")
			}
			ids[p.ID] = true
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				problems = append(problems, "panel "+strconv.Quote(p.Title)+" has no query")
			}
			for _, tg := range p.Targets {
				where := "panel " + strconv.Quote(p.Title) + " query " + tg.RefID
				problems = append(problems, checkPromQL(where, tg.Expr, metrics)...)
				for _, n := range metricNames(tg.Expr) {
					used[n] = true
				}
			}
		}
	}
	walk(d.Panels)
	labelValues := regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	for _, v := range d.Templating.List {
		if m := labelValues.FindStringSubmatch(v.Definition); m != nil && !metrics[m[1]] {
			problems = append(problems, "variable "+v.Name+": vigil has no metric "+strconv.Quote(m[1]))
		}
	}
	return problems, used
}

func metricNames(expr string) []string {
	e, err := promQL.ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		return nil
	}
	var names []string
	promql.Inspect(e, func(n promql.Node, _ []promql.Node) error {
		if vs, ok := n.(*promql.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

func TestGrafanaDashboard(t *testing.T) {
	metrics := vigilMetrics(t)
	problems, used := checkDashboard(t, "grafana/vigil-dashboard.json", metrics)
	for _, p := range problems {
		t.Error(p)
	}
	// What the dashboard is for: failover latency, instances by state, probe rates, DNS and xDS
	// traffic, Consul staleness.
	for _, m := range []string{"vigil_xds_push_latency_seconds_bucket", "vigil_table_instances", "vigil_health_probes_total",
		"vigil_dns_queries_total", "vigil_xds_responses_total", "vigil_xds_nacks_total", "vigil_consul_staleness_seconds"} {
		if !used[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
}

// TestGrafanaDashboardCatchesErrors proves the check bites: a copy with a misspelt metric and a
// broken expression is refused at both.
func TestGrafanaDashboardCatchesErrors(t *testing.T) {
	problems, _ := checkDashboard(t, "testdata/grafana.bad.json", vigilMetrics(t))
	want := []string{
		`panel "Instances by state" query A: vigil has no metric "vigil_table_instance"`,
		`panel "Served instances" query A: 1:`,
		`variable job: vigil has no metric "vigil_table_versions"`,
	}
	for _, w := range want {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.HasPrefix(p, w) }) {
			t.Errorf("not reported: %s\ngot:\n%s", w, strings.Join(problems, "\n"))
		}
	}
	if len(problems) != len(want) {
		t.Errorf("got %d problems, want %d:\n%s", len(problems), len(want), strings.Join(problems, "\n"))
	}
}

// TestAlertRules runs `promtool check rules` and the rules' unit tests (`promtool test rules`),
// and checks every expression's metric names against vigil's.
func TestAlertRules(t *testing.T) {
	if out, err := run(t, "promtool", "check", "rules", "prometheus/vigil-alerts.yaml"); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	out, err := run(t, "promtool", "test", "rules", "prometheus/vigil-alerts.test.yaml")
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "prometheus/vigil-alerts.yaml")), &rules); err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "prometheus/vigil-alerts.test.yaml")), &tests); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	metrics := vigilMetrics(t)
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			for _, p := range checkPromQL("alert "+r.Alert, r.Expr, metrics) {
				t.Error(p)
			}
			if !fires[r.Alert] {
				t.Errorf("alert %s: no unit test sees it fire", r.Alert)
			}
		}
	}
	for _, want := range []string{"VigilInstanceFlapping", "VigilUpstreamPanic", "VigilConsulViewStale", "VigilXDSNacks", "VigilDNSServfailRate"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
}

// TestAlertRulesCatchErrors proves `promtool check rules` is consulted: a broken copy fails.
func TestAlertRulesCatchErrors(t *testing.T) {
	out, err := run(t, "promtool", "check", "rules", "testdata/alerts.bad.yaml")
	if err == nil || !strings.Contains(out, "parse error") {
		t.Errorf("promtool check rules accepted the broken rules: %v\n%s", err, out)
	}
}
