package configs_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/xds"
)

// The README's configuration reference is generated from configs/vigil.yaml (the embedded
// default, every field with its default and a comment): `go generate ./configs` rewrites it.
//
//go:generate go test -run ^TestReadmeReference$ -update .

var update = flag.Bool("update", false, "rewrite README.md's configuration reference from vigil.yaml")

const (
	readmePath = "../README.md"
	refBegin   = "<!-- config-reference:begin (generated from configs/vigil.yaml by `go generate ./configs`; do not edit) -->"
	refEnd     = "<!-- config-reference:end -->"
)

// entry is one key of vigil.yaml: its path (upstreams[].instances[].port), its value's source
// text, its comment, and its value node.
type entry struct {
	path, value, doc string
	node             *yaml.Node
	leaf             bool
	inFlow           bool // a key inside a flow mapping: its parent's row shows it
}

// yamlEntries lists every key of a YAML text, in order, with its value's source text and its
// comment: the text after '#' on the key's line and on the comment-only lines below it whose
// '#' is in the same column.
func yamlEntries(t *testing.T, text, prefix string) []entry {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatalf("%s: %v\n%s", prefix, err, text)
	}
	lines := strings.Split(text, "\n")
	comment := func(line int) string {
		l := lines[line-1]
		i := strings.Index(l, " #")
		if i < 0 {
			return ""
		}
		col := i + 1
		doc := strings.TrimSpace(l[col+1:])
		for _, next := range lines[line:] {
			if len(next) <= col || next[col] != '#' || strings.TrimSpace(next[:col]) != "" {
				break
			}
			doc += " " + strings.TrimSpace(next[col+1:])
		}
		return doc
	}
	source := func(n *yaml.Node) string {
		l := lines[n.Line-1][n.Column-1:]
		if i := strings.Index(l, " #"); i >= 0 {
			l = l[:i]
		}
		return strings.TrimSpace(l)
	}
	var out []entry
	var walk func(n *yaml.Node, path string, inFlow bool)
	walk = func(n *yaml.Node, path string, inFlow bool) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path, inFlow)
			}
		case yaml.SequenceNode:
			for _, c := range n.Content {
				if c.Kind == yaml.MappingNode {
					walk(c, path+"[]", inFlow)
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				flow := v.Style&yaml.FlowStyle != 0 || v.Kind == yaml.ScalarNode
				e := entry{path: p, doc: comment(k.Line), node: v, leaf: flow, inFlow: inFlow}
				if flow {
					e.value = source(v)
				}
				out = append(out, e)
				walk(v, p, inFlow || v.Style&yaml.FlowStyle != 0)
			}
		}
	}
	walk(&doc, prefix, false)
	return out
}

// commentedBlocks returns the YAML examples in vigil.yaml's comments (lines starting "#   "),
// each with the path it belongs under: a sequence is a list of upstreams, a mapping is a block of
// one upstream.
func commentedBlocks(t *testing.T) map[string]string {
	t.Helper()
	blocks := map[string]string{}
	var cur []string
	flush := func() {
		if len(cur) == 0 {
			return
		}
		text := strings.Join(cur, "\n") + "\n"
		prefix := "upstreams[]"
		if strings.HasPrefix(strings.TrimSpace(cur[0]), "- ") {
			prefix = "upstreams"
		}
		blocks[text] = prefix
		cur = nil
	}
	for _, l := range strings.Split(string(configs.Default), "\n") {
		if strings.HasPrefix(l, "#   ") {
			cur = append(cur, strings.TrimPrefix(l, "# "))
			continue
		}
		flush()
	}
	flush()
	return blocks
}

// allEntries are the live keys of vigil.yaml then those of its commented examples, each path once.
func allEntries(t *testing.T) (live, commented []entry) {
	live = yamlEntries(t, string(configs.Default), "")
	blocks := commentedBlocks(t)
	texts := make([]string, 0, len(blocks))
	for text := range blocks {
		texts = append(texts, text)
	}
	// In the file's order.
	slices.SortFunc(texts, func(a, b string) int {
		return bytes.Index(configs.Default, []byte("# "+a[:strings.IndexByte(a, '\n')])) -
			bytes.Index(configs.Default, []byte("# "+b[:strings.IndexByte(b, '\n')]))
	})
	seen := map[string]bool{}
	for _, text := range texts {
		for _, e := range yamlEntries(t, text, blocks[text]) {
			if !seen[e.path] {
				seen[e.path] = true
				commented = append(commented, e)
			}
		}
	}
	return live, commented
}

// structPaths lists the YAML path of every field of type t, nested, as the loader decodes it.
func structPaths(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if opts == "inline" {
			out = append(out, structPaths(f.Type, prefix)...)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		p := name
		if prefix != "" {
			p = prefix + "." + name
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct:
			out = append(out, structPaths(ft, p)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, structPaths(ft.Elem(), p+"[]")...)
		default:
			out = append(out, p)
		}
	}
	return out
}

// documentedAs maps a field to where vigil.yaml documents it: an upstream's check, dns and policy
// fields, and the service's check, are those of defaults.
func documentedAs(p string, known map[string]bool) string {
	if rest, ok := strings.CutPrefix(p, "upstreams[]."); ok && known["defaults."+rest] {
		return "defaults." + rest
	}
	if rest, ok := strings.CutPrefix(p, "service.check."); ok {
		return "defaults.check." + rest
	}
	return p
}

// TestReferenceCoversConfig: every field of configs.Config is in vigil.yaml (as a live key or in
// a commented example) and, through the generated reference, in the README.
func TestReferenceCoversConfig(t *testing.T) {
	live, commented := allEntries(t)
	known := map[string]bool{}
	for _, e := range append(live, commented...) {
		known[e.path] = true
	}
	has := func(p string) bool {
		if known[p] {
			return true
		}
		for k := range known { // a map field shown with content, e.g. meta: {role: primary}
			if strings.HasPrefix(k, p+".") {
				return true
			}
		}
		return false
	}
	fields := structPaths(reflect.TypeFor[configs.Config](), "")
	if len(fields) < 100 {
		t.Fatalf("only %d fields found in configs.Config: the walk is broken", len(fields))
	}
	for _, p := range fields {
		if !has(documentedAs(p, known)) {
			t.Errorf("%s (yaml of configs.Config) is not in configs/vigil.yaml: add it with its default and a comment, then `go generate ./configs`", p)
		}
	}
	// And no key of vigil.yaml is one the loader does not know (the commented examples are not
	// parsed by the loader).
	all := map[string]bool{}
	for _, p := range fields {
		all[p] = true
	}
	for _, e := range commented {
		if !all[e.path] && !has2(all, e.path) {
			t.Errorf("vigil.yaml's example %s is not a field of configs.Config", e.path)
		}
	}
}

// has2 reports whether p is a field of all or a key inside a map field of it.
func has2(all map[string]bool, p string) bool {
	for q := range all {
		if q == p || strings.HasPrefix(p, q+".") || strings.HasPrefix(q, p+".") || strings.HasPrefix(q, p+"[]") {
			return true
		}
	}
	return false
}

// appliedLater are defaults that the loader leaves zero and the xDS translation applies: their
// values in vigil.yaml are checked against the xds package's constants instead.
var appliedLater = map[string]string{
	"xds.inbound.protocol":            xds.ProtocolTCP,
	"xds.inbound.connect_timeout":     xds.DefaultConnectTimeout.String(),
	"upstreams[].xds.protocol":        xds.ProtocolTCP,
	"upstreams[].xds.connect_timeout": xds.DefaultConnectTimeout.String(),
}

// TestDefaultsAppliedLater: the defaults that the xDS translation applies are those vigil.yaml shows.
func TestDefaultsAppliedLater(t *testing.T) {
	live, commented := allEntries(t)
	seen := 0
	for _, e := range append(live, commented...) {
		want, ok := appliedLater[e.path]
		if !ok || e.inFlow { // not the demo upstreams' own values
			continue
		}
		seen++
		got := e.value
		if d, err := time.ParseDuration(got); err == nil {
			got = d.String()
		}
		if got != want {
			t.Errorf("vigil.yaml shows %s: %s; the xds package applies %s", e.path, e.value, want)
		}
	}
	if seen != len(appliedLater) {
		t.Errorf("found %d of the %d defaults applied later in vigil.yaml", seen, len(appliedLater))
	}
}

// skipDefault reports whether an entry's value is not a default: a demo value, a required field
// or an example of a block that is absent by default.
func skipDefault(e entry) bool {
	_, later := appliedLater[e.path]
	return later || strings.HasPrefix(e.doc, "demo") || strings.Contains(e.doc, "required") ||
		strings.Contains(e.doc, "default: none") || strings.HasPrefix(e.path, "upstreams") && !strings.HasPrefix(e.path, "upstreams[].forward.")
}

// TestDefaultsMatchLoader: each value that vigil.yaml shows is what the loader fills in when the
// key is absent. Each key is decoded alone onto the built-in defaults (or onto an upstream as
// the loader completes it): the result must not differ from them.
func TestDefaultsMatchLoader(t *testing.T) {
	live, commented := allEntries(t)
	upstream := func() configs.Upstream {
		cfg, err := configs.Parse([]byte("upstreams: [{name: x, instances: [{address: 127.0.0.1, port: 1}], forward: {listen: 127.0.0.1:1}}]"))
		if err != nil {
			t.Fatal(err)
		}
		u := cfg.Upstreams[0]
		u.Forward.Listen = ""
		return u
	}
	checked := 0
	for _, e := range append(live, commented...) {
		if !e.leaf || skipDefault(e) {
			continue
		}
		var base func() any
		path := e.path
		if rest, ok := strings.CutPrefix(path, "upstreams[]."); ok {
			base, path = func() any { u := upstream(); return &u }, rest
		} else {
			base = func() any { c := configs.Builtin(); return &c }
		}
		// {a: {b: {c: value}}}
		node := e.node
		keys := strings.Split(path, ".")
		for i := len(keys) - 1; i >= 0; i-- {
			node = &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{{Kind: yaml.ScalarNode, Value: keys[i]}, node}}
		}
		got := base()
		if err := node.Decode(got); err != nil {
			t.Errorf("%s: %v", e.path, err)
			continue
		}
		want, _ := yaml.Marshal(base())
		have, _ := yaml.Marshal(got)
		if !bytes.Equal(want, have) {
			t.Errorf("vigil.yaml shows %s: %s, but the loader's default differs (mark it `# demo` or fix it)", e.path, e.value)
		}
		checked++
	}
	if checked < 100 {
		t.Errorf("only %d defaults checked", checked)
	}
}

// renderReference is the README's configuration reference: one row per key of vigil.yaml.
func renderReference(t *testing.T) string {
	live, commented := allEntries(t)
	esc := strings.NewReplacer("|", `\|`).Replace
	var b strings.Builder
	b.WriteString(refBegin + "\n\n| field | default | meaning |\n|---|---|---|\n")
	row := func(e entry) {
		doc, value := e.doc, e.value
		if d, ok := strings.CutPrefix(doc, "demo;"); ok {
			doc, value = strings.TrimSpace(d), ""
		}
		if strings.HasPrefix(doc, "required") {
			value = "" // an example, not a default
		}
		switch {
		case e.inFlow:
			return
		case !e.leaf && doc == "" && strings.Contains(e.path, "."):
			return // a nested block without a comment: its keys say it all
		case !e.leaf:
			value = ""
		case value == "":
			value = "—"
		default:
			value = "`" + esc(value) + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", e.path, value, esc(doc))
	}
	for _, e := range live {
		if strings.HasPrefix(e.path, "upstreams[]") {
			continue // the demo upstreams; their fields come from the commented examples
		}
		row(e)
	}
	for _, e := range commented {
		row(e)
	}
	b.WriteString("\n" + refEnd)
	return b.String()
}

// TestTourConfigs: the configurations that README's tour runs are valid.
func TestTourConfigs(t *testing.T) {
	files, _ := filepath.Glob("../docs/*.yaml")
	if len(files) == 0 {
		t.Fatal("no docs/*.yaml")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := configs.Parse(data); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestReadmeReference: README.md's configuration reference is the one generated from vigil.yaml.
func TestReadmeReference(t *testing.T) {
	readme, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	i, j := strings.Index(text, refBegin), strings.Index(text, refEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q ... %q section", refBegin, refEnd)
	}
	want := renderReference(t)
	if text[i:j+len(refEnd)] == want {
		return
	}
	if *update {
		if err := os.WriteFile(readmePath, []byte(text[:i]+want+text[j+len(refEnd):]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's configuration reference is not the one generated from configs/vigil.yaml: run `go generate ./configs`")
}

// TestTourMatchesDefault: what README's tour relies on in the embedded default is there — the
// line its sed edits (admin.token_file, found by "bearer token") and the demo instances it names.
func TestTourMatchesDefault(t *testing.T) {
	var edited []string
	n := 0
	for _, l := range strings.Split(string(configs.Default), "\n") {
		if strings.Contains(l, "bearer token") && strings.Contains(l, `token_file: ""`) {
			l = strings.Replace(l, `token_file: ""`, "token_file: /tmp/vigil-tour/token", 1)
			n++
		}
		edited = append(edited, l)
	}
	if n != 1 {
		t.Fatalf(`%d lines of vigil.yaml have "bearer token" and token_file: "": the README tour's sed edits exactly one`, n)
	}
	cfg, err := configs.Parse([]byte(strings.Join(edited, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Admin.TokenFile != "/tmp/vigil-tour/token" {
		t.Errorf("the tour's sed sets admin.token_file to %q", cfg.Admin.TokenFile)
	}
	have := map[string]bool{}
	for _, u := range cfg.Upstreams {
		for _, in := range u.Instances {
			have[fmt.Sprintf("%s/%s:%d", u.Name, in.Address, in.Port)] = true
		}
	}
	for _, want := range []string{"web/127.0.0.1:18081", "web/127.0.0.1:18082", "web/127.0.0.1:18083",
		"db/127.0.0.1:18091", "db/127.0.0.1:18092"} {
		if !have[want] {
			t.Errorf("the README tour names demo instance %s, which the embedded default no longer has", want)
		}
	}
}
