package main

import (
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/configs"
)

// TestReadmeMetrics: every vigil_* metric family that a vigil registers (every part on: DNS, xDS,
// Consul with a registered service, a forwarder) is in README.md's metrics reference, and every
// vigil_* name there is one vigil registers.
func TestReadmeMetrics(t *testing.T) {
	cfg, err := configs.Parse([]byte(`
consul: {enabled: true}
service: {name: web, port: 8080}
upstreams:
  - name: api
    instances: [{address: 127.0.0.1, port: 1}]
    forward: {listen: 127.0.0.1:0}
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApp(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc)
	go func() { a.reg.Describe(ch); close(ch) }()
	fq := regexp.MustCompile(`fqName: "(vigil_[a-z0-9_]+)".*variableLabels: \{([a-z0-9_,]*)\}`)
	var registered []string
	labels := map[string][]string{}
	for d := range ch {
		if m := fq.FindStringSubmatch(d.String()); m != nil && !slices.Contains(registered, m[1]) {
			registered = append(registered, m[1])
			if m[2] != "" {
				labels[m[1]] = strings.Split(m[2], ",")
			}
		}
	}
	if len(registered) < 30 {
		t.Fatalf("only %d vigil_* families registered: %q", len(registered), registered)
	}

	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	i := strings.Index(text, "\n## Metrics\n")
	if i < 0 {
		t.Fatal(`README.md has no "## Metrics" section`)
	}
	section := text[i+1:]
	if j := strings.Index(section[3:], "\n## "); j >= 0 {
		section = section[:j+3]
	}
	// name -> the labels column of its row.
	listed := map[string]string{}
	name := regexp.MustCompile("`(vigil_[a-z0-9_]+)`")
	for _, line := range strings.Split(section, "\n") {
		cols := strings.Split(line, "|")
		if len(cols) < 5 {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cols[1], -1) {
			listed[m[1]] = cols[3]
		}
	}
	for _, name := range registered {
		row, ok := listed[name]
		if !ok {
			t.Errorf("%s is registered but not in README.md's Metrics table: add a row (type, labels)", name)
			continue
		}
		for _, l := range labels[name] {
			if !regexp.MustCompile(`\b` + l + `\b`).MatchString(row) {
				t.Errorf("README.md's Metrics row of %s does not name its label %q", name, l)
			}
		}
	}
	for name := range listed {
		if !slices.Contains(registered, name) {
			t.Errorf("README.md's Metrics table lists %s, which vigil does not register", name)
		}
	}
}
