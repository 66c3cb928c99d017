package consulfleet

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// BenchmarkConsulFleet: see BENCHMARKS.md ("Consul load at fleet scale"). 100 vigils × 50
// upstreams against a 3-server cluster and one client agent, each mode in turn per round
// (rotated), medians over 2 rounds (~4 minutes). VIGIL_CONSULFLEET_QUICK=1: one short round
// (~1.5 minutes); VIGIL_CONSULFLEET_MODES=blocking,cache,streaming,streaming+cache picks modes;
// VIGIL_CONSULFLEET_SIDECARS changes the 100.
func BenchmarkConsulFleet(b *testing.B) {
	bin := testutil.Need(b, "consul")
	p := Params{Sidecars: 100, Upstreams: 50, PerUpstream: 3, Wait: 10 * time.Second, Window: 10 * time.Second}
	rounds := 2
	if os.Getenv("VIGIL_CONSULFLEET_QUICK") != "" {
		p.Window, p.Wait, rounds = 5*time.Second, 5*time.Second, 1
	}
	if n, err := strconv.Atoi(os.Getenv("VIGIL_CONSULFLEET_SIDECARS")); err == nil && n > 0 {
		p.Sidecars = n
	}
	modes := DefaultModes
	if m := os.Getenv("VIGIL_CONSULFLEET_MODES"); m != "" { // e.g. "cache,streaming"
		modes = slices.DeleteFunc(slices.Clone(Modes), func(x Mode) bool { return !slices.Contains(strings.Split(m, ","), x.Name) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for b.Loop() {
		c, err := StartCluster(ctx, bin, b.TempDir(), p)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		steady, churn := map[string][]Sample{}, map[string][]Sample{}
		failed := map[string]int{}
		for r := range rounds {
			for i := range modes {
				m := modes[(i+r)%len(modes)]
				s, ch, err := c.Run(ctx, m)
				if err != nil { // a mode that breaks down is a result: say so, go on
					b.Logf("round %d %s: FAILED: %v", r, m.Name, err)
					failed[m.Name]++
					continue
				}
				b.Logf("round %d %-16s steady %+v churn %+v", r, m.Name, s, ch)
				steady[m.Name] = append(steady[m.Name], s)
				churn[m.Name] = append(churn[m.Name], ch)
			}
		}
		b.Log("\n" + table(p, modes, steady, churn, failed))
	}
}

func median(xs []Sample, f func(Sample) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// table is the markdown table of BENCHMARKS.md: medians per mode and phase.
func table(p Params, modes []Mode, steady, churn map[string][]Sample, failed map[string]int) string {
	var b strings.Builder
	perSidecar := func(rate float64) float64 { // per upstream per wait_time per sidecar
		return rate * p.Wait.Seconds() / float64(p.Sidecars*p.Upstreams)
	}
	fmt.Fprintf(&b, "| mode | phase | vigil→agent req/s | per upstream per wait_time per sidecar | server RPC req/s | server reads/s | agent→server RPC/s | CPU servers (cores) | CPU client agent | CPU all vigils | flip seen p50 / p99 | seen | converge |\n")
	fmt.Fprintf(&b, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, m := range modes {
		if failed[m.Name] > 0 {
			fmt.Fprintf(&b, "| %s | failed in %d round(s) | | | | | | | | | | | |\n", m.Name, failed[m.Name])
		}
		if len(steady[m.Name]) == 0 {
			continue
		}
		for _, ph := range []struct {
			name string
			s    []Sample
		}{{"steady", steady[m.Name]}, {"churn 1/s", churn[m.Name]}} {
			xs := ph.s
			md := func(f func(Sample) float64) float64 { return median(xs, f) }
			lag := "–"
			seen, conv := "–", "–"
			if ph.name != "steady" {
				lag = fmt.Sprintf("%.0f / %.0f ms", md(func(s Sample) float64 { return float64(s.LagP50) / 1e6 }),
					md(func(s Sample) float64 { return float64(s.LagP99) / 1e6 }))
				seen = fmt.Sprintf("%.0f%%", 100*md(func(s Sample) float64 { return s.Seen }))
				conv = fmt.Sprintf("%.2f s", md(func(s Sample) float64 { return s.Converge.Seconds() }))
			}
			http := md(func(s Sample) float64 { return s.HTTP })
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.3f | %.1f | %.1f | %.1f | %.3f | %.3f | %.3f | %s | %s | %s |\n",
				m.Name, ph.name, http, perSidecar(http),
				md(func(s Sample) float64 { return s.ServerRPC }), md(func(s Sample) float64 { return s.ServerRead }),
				md(func(s Sample) float64 { return s.ClientRPC }),
				md(func(s Sample) float64 { return s.ServerCPU }), md(func(s Sample) float64 { return s.ClientCPU }),
				md(func(s Sample) float64 { return s.VigilCPU }), lag, seen, conv)
		}
	}
	return b.String()
}
