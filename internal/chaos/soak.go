package chaos

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	pmodel "github.com/prometheus/common/model"
)

// sample is one reading of vigil's own resource metrics.
type sample struct {
	at                   time.Time
	rss, goroutines, fds float64
}

// Slopes is how vigil's resources moved over a soak run, by least squares over the samples after
// the warm-up (the first fifth of the run), per hour.
type Slopes struct {
	Samples                         int
	RSSMBPerHour, GoroutinesPerHour float64
	FDsPerHour                      float64
	RSSMB, Goroutines, FDs          [2]float64 // median of the first and of the last quarter after warm-up
	Reloads                         int
}

func (s Slopes) String() string {
	return fmt.Sprintf("| resource | first quarter | last quarter | slope per hour |\n|---|---:|---:|---:|\n"+
		"| RSS (MB) | %.1f | %.1f | %+.2f |\n| goroutines | %.0f | %.0f | %+.1f |\n| open fds | %.0f | %.0f | %+.1f |\n\n"+
		"%d samples, %d reloads (SIGHUP)\n",
		s.RSSMB[0], s.RSSMB[1], s.RSSMBPerHour, s.Goroutines[0], s.Goroutines[1], s.GoroutinesPerHour,
		s.FDs[0], s.FDs[1], s.FDsPerHour, s.Samples, s.Reloads)
}

// sampleResources reads vigil's /metrics every period until ctx ends.
func sampleResources(ctx context.Context, admin string, period time.Duration) []sample {
	hc := &http.Client{Timeout: 2 * time.Second}
	var out []sample
	every(ctx, period, func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
		if err != nil {
			return
		}
		resp, err := hc.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(pmodel.UTF8Validation)
		fams, err := p.TextToMetricFamilies(resp.Body)
		if err != nil {
			return
		}
		gauge := func(name string) float64 {
			f := fams[name]
			if f == nil || len(f.Metric) == 0 {
				return 0
			}
			if g := f.Metric[0].GetGauge(); g != nil {
				return g.GetValue()
			}
			return 0
		}
		out = append(out, sample{at: time.Now(), rss: gauge("process_resident_memory_bytes") / 1e6,
			goroutines: gauge("go_goroutines"), fds: gauge("process_open_fds")})
	})
	return out
}

func slopes(ss []sample, reloads int) Slopes {
	ss = ss[len(ss)/5:] // warm-up
	s := Slopes{Samples: len(ss), Reloads: reloads}
	if len(ss) < 4 {
		return s
	}
	fit := func(y func(sample) float64) float64 {
		t0 := ss[0].at
		var n, sx, sy, sxx, sxy float64
		for _, p := range ss {
			x := p.at.Sub(t0).Hours()
			n, sx, sy, sxx, sxy = n+1, sx+x, sy+y(p), sxx+x*x, sxy+x*y(p)
		}
		return (n*sxy - sx*sy) / (n*sxx - sx*sx)
	}
	quarter := func(y func(sample) float64, last bool) float64 {
		q := ss[:len(ss)/4]
		if last {
			q = ss[len(ss)-len(ss)/4:]
		}
		v := make([]float64, len(q))
		for i, p := range q {
			v[i] = y(p)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	rss := func(p sample) float64 { return p.rss }
	gor := func(p sample) float64 { return p.goroutines }
	fds := func(p sample) float64 { return p.fds }
	s.RSSMBPerHour, s.GoroutinesPerHour, s.FDsPerHour = fit(rss), fit(gor), fit(fds)
	s.RSSMB = [2]float64{quarter(rss, false), quarter(rss, true)}
	s.Goroutines = [2]float64{quarter(gor, false), quarter(gor, true)}
	s.FDs = [2]float64{quarter(fds, false), quarter(fds, true)}
	return s
}

// reloads rewrites vigil's configuration (an extra upstream added or removed, the check interval
// changed) and sends SIGHUP, every few seconds until ctx ends; it returns how many it sent.
func (j *injector) reloads(ctx context.Context) (int, error) {
	base, err := os.ReadFile(j.vigil.config)
	if err != nil {
		return 0, err
	}
	n := 0
	for sleep(ctx, j.between(3*time.Second, 8*time.Second)) {
		cfg := string(base)
		if n%2 == 0 {
			cfg = strings.Replace(cfg, "  dns: {ttl: 0s}\n", "  dns: {ttl: 0s}\n  check: {interval: 900ms}\n", 1)
			cfg += fmt.Sprintf("  - {name: soak-extra, check: {kind: tcp}, instances: [{address: %s, port: %d}]}\n", appIP, backendPort)
		}
		if err := os.WriteFile(j.vigil.config, []byte(cfg), 0o644); err != nil {
			return n, err
		}
		if err := j.vigil.signal(syscall.SIGHUP); err != nil {
			return n, err
		}
		n++
		j.m.fault("configuration reloaded (SIGHUP)")
	}
	return n, os.WriteFile(j.vigil.config, base, 0o644)
}
