package failover

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// BenchmarkFailover: see BENCHMARKS.md ("Failover"). VIGIL_FAILOVER_QUICK=1 runs a few events at
// the default setting only; VIGIL_FAILOVER_OUT=dir writes the report and one SVG timeline per path;
// VIGIL_FAILOVER_PATHS picks paths (below).
func BenchmarkFailover(b *testing.B) {
	consul := testutil.Need(b, "consul")
	testutil.Need(b, "python3")
	dir := b.TempDir()
	build := func(pkg, out string) string {
		bin := filepath.Join(dir, out)
		if msg, err := execGo("build", "-o", bin, pkg); err != nil {
			b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
		}
		return bin
	}
	backend := build("github.com/vigil-sidecar/vigil/internal/bench/failover/backend", "backend")
	vigil := build("github.com/vigil-sidecar/vigil/cmd/vigil", "vigil")

	quick := os.Getenv("VIGIL_FAILOVER_QUICK") != ""
	dnsDef, xdsDef, fwDef := NewVigil(Defaults)
	paths := []Path{dnsDef, xdsDef, fwDef}
	kills, stops := 20, 10
	if quick {
		kills, stops = 3, 2
	} else {
		dnsAgg, xdsAgg, fwAgg := NewVigil(Aggressive)
		paths = append(paths, dnsAgg, xdsAgg, fwAgg)
	}
	paths = append(paths, &ConsulDNS{})
	// VIGIL_FAILOVER_PATHS=vigil-forward,consul runs only the paths whose names start with one of
	// the prefixes (fewer clients: a closing backend is not overloaded by the other paths' traffic).
	report := "failover.md"
	if only := os.Getenv("VIGIL_FAILOVER_PATHS"); only != "" {
		paths = slices.DeleteFunc(paths, func(p Path) bool {
			return !slices.ContainsFunc(strings.Split(only, ","), func(pre string) bool { return strings.HasPrefix(p.Name(), pre) })
		})
		report = "failover-" + strings.ReplaceAll(only, ",", "-") + ".md"
	}
	cfg := Config{
		Paths:   paths,
		Env:     Env{Dir: dir, Consul: consul, Vigil: vigil, Logf: b.Logf},
		Kills:   kills,
		Stops:   stops,
		Rate:    100,
		Dead:    4 * time.Second,
		Backend: backend,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	for b.Loop() {
		res, err := Run(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		var md bytes.Buffer
		res.WriteMarkdown(&md)
		for _, set := range []string{"default", "aggressive"} {
			if log, err := os.ReadFile(filepath.Join(dir, "vigil-"+set+".log")); err == nil {
				b.Logf("vigil %s: %d watch connections given up (one connection at a time?)", set,
					bytes.Count(log, []byte("seems to serve one connection at a time")))
			}
		}
		b.Logf("failover, %d SIGKILLs and %d SIGSTOPs per backend kind, %d requests/s per client, run of %s:\n%s",
			kills, stops, cfg.Rate, res.Duration.Round(time.Second), md.String())
		if out := os.Getenv("VIGIL_FAILOVER_OUT"); out != "" {
			if err := os.MkdirAll(out, 0o755); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(out, report), md.Bytes(), 0o644); err != nil {
				b.Fatal(err)
			}
			if os.Getenv("VIGIL_FAILOVER_EVENTS") != "" {
				var evs bytes.Buffer
				res.WriteEvents(&evs)
				if err := os.WriteFile(filepath.Join(out, "events.txt"), evs.Bytes(), 0o644); err != nil {
					b.Fatal(err)
				}
			}
			for _, p := range res.Paths {
				var svg bytes.Buffer
				res.WriteSVG(&svg, p)
				if err := os.WriteFile(filepath.Join(out, p+".svg"), svg.Bytes(), 0o644); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}

// execGo runs the go command.
func execGo(args ...string) ([]byte, error) { return exec.Command("go", args...).CombinedOutput() }
