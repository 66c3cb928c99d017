package forward

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// sample is one path's figures in one round.
type sample struct {
	bulk1, bulk16, short float64 // MB/s, MB/s, connections/s
	failed               int64   // short connections that failed
	p99                  time.Duration
	cpuPerGB             float64 // CPU seconds of the proxy process per GB forwarded (bulk phases)
}

// BenchmarkForward: see BENCHMARKS.md ("Forwarder"). VIGIL_FORWARD_QUICK=1 runs smaller rounds
// (~30 s); VIGIL_FORWARD_OUT=file writes the markdown table there.
func BenchmarkForward(b *testing.B) {
	testutil.Need(b, "haproxy")
	quick := os.Getenv("VIGIL_FORWARD_QUICK") != ""
	rounds, total, shortFor, rr := 5, int64(1<<30), 2*time.Second, 2000
	if quick {
		rounds, total, shortFor, rr = 3, 256<<20, 500*time.Millisecond, 500
	}
	const shortWorkers = 16
	dir := b.TempDir()
	vigilBin := filepath.Join(dir, "vigil")
	if msg, err := exec.Command("go", "build", "-o", vigilBin, "github.com/vigil-sidecar/vigil/cmd/vigil").CombinedOutput(); err != nil {
		b.Fatalf("go build vigil: %v\n%s", err, msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for b.Loop() {
		bk, err := StartBackends(2)
		if err != nil {
			b.Fatal(err)
		}
		defer bk.Close()
		v, err := Vigil(ctx, vigilBin, dir, bk)
		if err != nil {
			b.Fatal(err)
		}
		defer v.Close()
		h, err := HAProxy(ctx, dir, bk)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		paths := []*Path{Direct(bk), v, h}
		got := map[string][]sample{}
		for r := range rounds {
			for i := range paths {
				p := paths[(i+r)%len(paths)] // interleaved, each path first in turn
				var s sample
				t0, _ := ticks(p)
				if s.bulk1, err = Bulk(p, 1, total); err != nil {
					b.Fatalf("%s: bulk over 1 connection: %v", p.Name, err)
				}
				if s.bulk16, err = Bulk(p, 16, total); err != nil {
					b.Fatalf("%s: bulk over 16 connections: %v", p.Name, err)
				}
				if t1, ok := ticks(p); ok {
					s.cpuPerGB = float64(t1-t0) / 100 / (2 * float64(total) / 1e9)
				}
				s.short, s.failed = ShortRate(p, shortWorkers, shortFor)
				if s.p99, err = P99(p, rr); err != nil {
					b.Fatalf("%s: kept connection: %v", p.Name, err)
				}
				got[p.Name] = append(got[p.Name], s)
			}
		}
		var md strings.Builder
		fmt.Fprintf(&md, "| path | bulk, 1 conn (MB/s) | bulk, 16 conns (MB/s) | short conns/s | failed | p99 kept conn (µs) | proxy CPU s/GB |\n|---|---|---|---|---|---|---|\n")
		med := map[string]sample{}
		for _, p := range paths {
			m := median(got[p.Name])
			med[p.Name] = m
			cpu := "—"
			if p.Pid != 0 {
				cpu = fmt.Sprintf("%.2f", m.cpuPerGB)
			}
			fmt.Fprintf(&md, "| %s | %.0f | %.0f | %.0f | %d | %.0f | %s |\n", p.Name, m.bulk1, m.bulk16, m.short, m.failed,
				float64(m.p99.Microseconds()), cpu)
		}
		vm, hm := med["vigil"], med["haproxy"]
		fmt.Fprintf(&md, "| **vigil/HAProxy** | **%.2f×** | **%.2f×** | **%.2f×** | | **%.2f×** (lower is better) | **%.2f×** (lower is better) |\n",
			vm.bulk1/hm.bulk1, vm.bulk16/hm.bulk16, vm.short/hm.short, float64(vm.p99)/float64(hm.p99), vm.cpuPerGB/hm.cpuPerGB)
		fmt.Fprintf(&md, "\nMedians of %d interleaved rounds; each bulk phase moves %d MiB; short connections from %d clients for %s per round; p99 of %d request/responses.\n",
			rounds, total>>20, shortWorkers, shortFor, rr)
		for _, p := range []*Path{v, h} {
			if counts, err := SyscallCounts(ctx, p, 256<<20); err != nil {
				b.Errorf("strace %s: %v", p.Name, err)
			} else if counts != nil {
				fmt.Fprintf(&md, "\n%s's system calls during a 256 MiB bulk transfer (strace -f -c): splice %d, read %d, write %d, recvfrom %d, sendto %d.\n",
					p.Name, counts["splice"], counts["read"], counts["write"], counts["recvfrom"], counts["sendto"])
			}
		}
		b.Logf("forwarder, direct vs vigil vs HAProxy:\n%s", md.String())
		if out := os.Getenv("VIGIL_FORWARD_OUT"); out != "" {
			if err := os.WriteFile(out, []byte(md.String()), 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// ticks returns the CPU ticks of the path's process, if it has one.
func ticks(p *Path) (int64, bool) {
	if p.Pid == 0 {
		return 0, false
	}
	t, err := cpuTicks(p.Pid)
	return t, err == nil
}

// median returns the median of each figure over the rounds (failures: their sum).
func median(ss []sample) sample {
	pick := func(f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	var m sample
	m.bulk1 = pick(func(s sample) float64 { return s.bulk1 })
	m.bulk16 = pick(func(s sample) float64 { return s.bulk16 })
	m.short = pick(func(s sample) float64 { return s.short })
	m.p99 = time.Duration(pick(func(s sample) float64 { return float64(s.p99) }))
	m.cpuPerGB = pick(func(s sample) float64 { return s.cpuPerGB })
	for _, s := range ss {
		m.failed += s.failed
	}
	return m
}
