package deployments_test

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// lintDockerfile parses a Dockerfile with BuildKit's parser and linter (any warning is a problem)
// and checks the image's rules: a static build, a distroless or scratch base, a non-root USER, a
// HEALTHCHECK that runs vigil itself. It returns every problem found.
func lintDockerfile(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		return []string{"parse: " + err.Error()}
	}
	var problems []string
	for _, w := range res.Warnings {
		problems = append(problems, "parser: "+w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		problems = append(problems, fmt.Sprintf("lint %s (line %d): %s", rule, line, msg))
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return append(problems, "instructions: "+err.Error())
	}
	if len(stages) < 2 {
		return append(problems, "want a build stage and a final stage")
	}
	var static bool
	for _, c := range stages[0].Commands {
		if r, ok := c.(*instructions.RunCommand); ok && strings.Contains(strings.Join(r.CmdLine, " "), "CGO_ENABLED=0") && strings.Contains(strings.Join(r.CmdLine, " "), "go build") {
			static = true
		}
	}
	if !static {
		problems = append(problems, "the build stage has no CGO_ENABLED=0 go build (a static binary)")
	}
	final := stages[len(stages)-1]
	if final.BaseName != "scratch" && !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") {
		problems = append(problems, "final image "+final.BaseName+" is neither scratch nor distroless/static")
	}
	var user string
	var health *instructions.HealthCheckCommand
	var entrypoint []string
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.HealthCheckCommand:
			health = c
		case *instructions.EntrypointCommand:
			entrypoint = c.CmdLine
		}
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "root" || u == "0" {
		problems = append(problems, fmt.Sprintf("final image runs as root (USER %q)", user))
	}
	if health == nil || health.Health == nil || len(health.Health.Test) < 2 || health.Health.Test[0] != "CMD" {
		problems = append(problems, "no HEALTHCHECK CMD in the final image")
	} else if !slices.Equal(health.Health.Test[1:3], []string{"/vigil", "health"}) {
		problems = append(problems, fmt.Sprintf("HEALTHCHECK runs %q, want /vigil health", health.Health.Test[1:]))
	}
	if !slices.Equal(entrypoint, []string{"/vigil"}) {
		problems = append(problems, fmt.Sprintf("ENTRYPOINT %q, want [\"/vigil\"]", entrypoint))
	}
	return problems
}

func TestDockerfile(t *testing.T) {
	for _, p := range lintDockerfile(t, "docker/Dockerfile") {
		t.Error(p)
	}
}

// TestDockerfileLintCatchesErrors proves the checks bite: a copy running as root on a full
// Debian base, with a dynamic build, no HEALTHCHECK, a shell-form ENTRYPOINT, and what BuildKit's linter warns about.
func TestDockerfileLintCatchesErrors(t *testing.T) {
	got := lintDockerfile(t, "testdata/Dockerfile.bad")
	want := []string{
		"lint FromAsCasing",
		"lint MaintainerDeprecated",
		"no CGO_ENABLED=0 go build",
		"final image debian:bookworm is neither scratch nor distroless/static",
		`final image runs as root (USER "root")`,
		"no HEALTHCHECK CMD",
		"ENTRYPOINT",
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, w) }) {
			t.Errorf("the broken Dockerfile is not reported for %q; got:\n%s", w, strings.Join(got, "\n"))
		}
	}
}
