package footprint

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// BenchmarkFootprint: see BENCHMARKS.md ("Footprint"). Each round measures, one after the other
// (interleaved), vigil idle (no upstreams), then at each scale vigil probing every kind and a
// Consul agent running as many HTTP checks against the same http backend; the table gives medians
// over the rounds. Each window starts once the backend answers 90% of the scheduled probes (after
// at most 15 s; "not steady" marks a setup that did not get there). VIGIL_FOOTPRINT_QUICK=1: one short round. VIGIL_FOOTPRINT_KINDS=http,tcp and
// VIGIL_FOOTPRINT_SCALES=300 narrow it (Consul runs when http is among the kinds).
// VIGIL_FOOTPRINT_BASELINE=path measures that vigil binary too (rows "vigil-base"), interleaved:
// before and after a change in one run.
func BenchmarkFootprint(b *testing.B) {
	consul := testutil.Need(b, "consul")
	dir := b.TempDir()
	build := func(pkg, out string) string {
		bin := filepath.Join(dir, out)
		if msg, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
		}
		return bin
	}
	vigil := build("github.com/vigil-sidecar/vigil/cmd/vigil", "vigil")
	backendBin := build("github.com/vigil-sidecar/vigil/internal/bench/footprint/backend", "backend")

	rounds, warm, window := 3, time.Second, 2*time.Second
	if os.Getenv("VIGIL_FOOTPRINT_QUICK") != "" {
		rounds, warm, window = 1, 800*time.Millisecond, 1500*time.Millisecond
	}
	kinds := []string{"http", "https", "grpc", "tcp", "tls"}
	if v := os.Getenv("VIGIL_FOOTPRINT_KINDS"); v != "" {
		kinds = strings.Split(v, ",")
	}
	scales := []int{30, 300, 3000}
	if v := os.Getenv("VIGIL_FOOTPRINT_SCALES"); v != "" {
		scales = nil
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.Atoi(s)
			if err != nil {
				b.Fatal(err)
			}
			scales = append(scales, n)
		}
	}
	maxN := 0
	for _, n := range scales {
		maxN = max(maxN, n)
	}
	env := &Env{Dir: dir, Vigil: vigil, Consul: consul, Backends: map[string]*backend{}, Warm: warm, Window: window,
		Baseline: os.Getenv("VIGIL_FOOTPRINT_BASELINE")}
	for _, k := range kinds {
		be, err := startBackend(backendBin, k, maxN)
		if err != nil {
			b.Fatal(err)
		}
		defer be.close()
		env.Backends[k] = be
	}
	type key struct {
		who, kind string
		n         int
	}
	var order []key
	res := map[key][]Sample{}
	add := func(k key, s Sample, err error) {
		if err != nil {
			b.Fatalf("%s %s %d: %v", k.who, k.kind, k.n, err)
		}
		if _, ok := res[k]; !ok {
			order = append(order, k)
		}
		res[k] = append(res[k], s)
	}
	for b.Loop() {
		start := time.Now()
		for r := range rounds {
			s, err := RunVigil(env, env.Vigil, "", 0, false)
			add(key{"vigil", "idle", 0}, s, err)
			if env.Baseline != "" {
				s, err := RunVigil(env, env.Baseline, "", 0, false)
				add(key{"vigil-base", "idle", 0}, s, err)
			}
			for _, n := range scales {
				for _, kind := range kinds {
					s, err := RunVigil(env, env.Vigil, kind, n, false)
					add(key{"vigil", kind, n}, s, err)
					if env.Baseline != "" {
						s, err := RunVigil(env, env.Baseline, kind, n, false)
						add(key{"vigil-base", kind, n}, s, err)
					}
				}
				if env.Backends["http"] != nil {
					s, err := RunConsul(env, n)
					add(key{"consul", "http", n}, s, err)
				}
			}
			if env.Backends["http"] != nil && slices.Contains(scales, 300) {
				// Memory per pod: 100 upstreams × 3 instances with an Envoy-like ADS client.
				s, err := RunVigil(env, env.Vigil, "http", 300, true)
				add(key{"vigil+1 ADS client", "http", 300}, s, err)
			}
			b.Logf("round %d done at %s", r+1, time.Since(start).Round(time.Second))
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "| prober | kind | instances | probes/s | cores | CPU per probe | lag p99 | RSS | backend CPU per probe |\n")
	fmt.Fprintf(&t, "|---|---|---|---|---|---|---|---|---|\n")
	perProbe := map[key]float64{}
	for _, k := range order {
		col := func(f func(Sample) float64) float64 {
			var xs []float64
			for _, s := range res[k] {
				xs = append(xs, f(s))
			}
			return median(xs)
		}
		pp := col(func(s Sample) float64 { return s.PerProbe })
		perProbe[k] = pp
		lag := "–"
		if l := col(func(s Sample) float64 { return s.LagP99 }); !math.IsNaN(l) {
			lag = fmt.Sprintf("≤ %g ms", l)
		}
		steady := ""
		for _, s := range res[k] {
			if !s.Steady {
				steady = " (not steady)"
			}
		}
		fmt.Fprintf(&t, "| %s | %s | %d | %.0f%s | %.4f | %s | %s | %.1f MB | %s |\n", k.who, k.kind, k.n,
			col(func(s Sample) float64 { return s.Probes }), steady, col(func(s Sample) float64 { return s.Cores }),
			us(pp), lag, col(func(s Sample) float64 { return s.RSS }), us(col(func(s Sample) float64 { return s.BackendPer })))
		if k.who == "vigil" && k.kind != "idle" {
			b.ReportMetric(pp, fmt.Sprintf("µs/probe-%s-%d", k.kind, k.n))
		}
	}
	for _, n := range scales {
		v, c := perProbe[key{"vigil", "http", n}], perProbe[key{"consul", "http", n}]
		if v > 0 && c > 0 {
			fmt.Fprintf(&t, "\nAt %d HTTP instances Consul's agent spends %.1f× vigil's CPU per probe.", n, c/v)
		}
		for _, kind := range kinds {
			if base := perProbe[key{"vigil-base", kind, n}]; base > 0 && perProbe[key{"vigil", kind, n}] > 0 {
				fmt.Fprintf(&t, "\n%s at %d: the baseline spends %.1f× this vigil's CPU per probe.", kind, n, base/perProbe[key{"vigil", kind, n}])
			}
		}
	}
	b.Logf("footprint, %d rounds, window %s after %s of warm-up (medians; the machine is shared, figures are noisy):\n%s",
		rounds, window, warm, t.String())
}

func us(x float64) string {
	if math.IsNaN(x) {
		return "–"
	}
	return fmt.Sprintf("%.0f µs", x)
}
