package dns_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// The benchmark's upstreams: benchServices services of benchInstances healthy instances each.
var benchServices = []string{"web", "api", "db", "cache", "auth", "search"}

const benchInstances = 4

func benchIP(s, i int) string { return fmt.Sprintf("127.0.%d.%d", 10+s, i+1) }
func benchPort(s, i int) int  { return 20000 + s*100 + i }

func benchUpstreams() map[string][]inst {
	ups := map[string][]inst{}
	for s, name := range benchServices {
		for i := range benchInstances {
			ups[name] = append(ups[name], up(fmt.Sprintf("%s-%d", name, i), benchIP(s, i), benchPort(s, i), health.Healthy))
		}
	}
	return ups
}

// benchServeEnv makes the test binary a bare vigil DNS server (a subprocess of the benchmark,
// so that its CPU and memory are measured apart from dnsperf's and the harness's).
const benchServeEnv = "VIGIL_DNS_BENCH_SERVE"

// benchRRLEnv makes the bare server treat its loopback clients as outside allow_recursion, so
// that each query goes through response-rate limiting (at a rate no benchmark reaches).
const benchRRLEnv = "VIGIL_DNS_BENCH_RRL"

// benchServe runs the DNS server on addr until SIGTERM; it prints "ready" once listening.
func benchServe(addr string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg := dns.DefaultConfig()
	cfg.Listen = addr
	if os.Getenv(benchRRLEnv) != "" { // loopback outside allow_recursion: every query rate limited, none over
		cfg.AllowRecursion = []string{"192.0.2.0/24"}
		cfg.RateLimit.ResponsesPerSecond = 1_000_000_000
	}
	s, err := dns.New(cfg, newTable(table.Config{}, benchUpstreams()), nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if path := os.Getenv("VIGIL_DNS_BENCH_CPUPROFILE"); path != "" { // go tool pprof the test binary and this
		f, err := os.Create(path)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer f.Close()
			defer pprof.StopCPUProfile()
		}
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
		fmt.Println("ready", s.Addr())
	case err := <-done:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// peer is one DNS server under test, a child process.
type peer struct {
	name string
	port int
	cmd  *exec.Cmd
}

// startPeer starts cmd and waits until it answers.
func startPeer(b *testing.B, name string, port int, cmd *exec.Cmd) *peer {
	b.Helper()
	p := launch(b, name, port, cmd)
	waitAnswers(b, p)
	return p
}

// launch starts cmd and stops it when the benchmark ends.
func launch(b *testing.B, name string, port int, cmd *exec.Cmd) *peer {
	b.Helper()
	if cmd.Stdout == nil {
		cmd.Stdout = io.Discard
	}
	cmd.Stderr = io.Discard
	if testing.Verbose() {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return &peer{name: name, port: port, cmd: cmd}
}

// waitAnswers waits until a query for web.service.consul. SRV gets every instance.
func waitAnswers(b *testing.B, p *peer) {
	b.Helper()
	if !answers(p, time.Minute) {
		b.Fatalf("%s does not answer web.service.consul. SRV with every instance", p.name)
	}
}

// answers reports whether p answers web.service.consul. SRV with every instance within d.
func answers(p *peer, d time.Duration) bool {
	addr := fmt.Sprintf("127.0.0.1:%d", p.port)
	c := &mdns.Client{Timeout: 500 * time.Millisecond}
	deadline := time.After(d)
	for {
		m := new(mdns.Msg)
		m.SetQuestion("web.service.consul.", mdns.TypeSRV)
		m.SetEdns0(4096, false)
		if r, _, err := c.Exchange(m, addr); err == nil && len(r.Answer) == benchInstances {
			return true
		}
		select {
		case <-deadline:
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startVigil starts the bare vigil DNS server, the test binary run with benchServeEnv: it
// listens on a port of its own and reports it on its first line ("ready ADDR").
func startVigil(b *testing.B, name string, cmd *exec.Cmd) *peer {
	b.Helper()
	cmd.Env = append(cmd.Env, benchServeEnv+"=127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	p := launch(b, name, 0, cmd)
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Scan()
		line <- sc.Text()
		io.Copy(io.Discard, out)
	}()
	select {
	case l := <-line:
		addr, ok := strings.CutPrefix(l, "ready ")
		ap, err := netip.ParseAddrPort(addr)
		if !ok || err != nil {
			b.Fatalf("%s: first line %q, want ready ADDR", name, l)
		}
		p.port = int(ap.Port())
	case <-time.After(time.Minute):
		b.Fatalf("%s did not start", name)
	}
	waitAnswers(b, p)
	return p
}

// result is one dnsperf run against one peer.
type result struct {
	qps, mean, p99   float64 // queries/s, seconds, seconds
	completed, lost  float64
	cpuPerQuery      float64 // seconds of server CPU per completed query
	rssKB, rssPeakKB float64
}

// dnsperf runs dnsperf for secs against p; with verbose it also computes the p99 latency.
func dnsperf(b *testing.B, bin string, p *peer, qfile string, secs int, verbose bool) result {
	b.Helper()
	args := []string{"-s", "127.0.0.1", "-p", strconv.Itoa(p.port), "-d", qfile, "-c", "4", "-q", "100", "-l", strconv.Itoa(secs)}
	if verbose {
		args = append(args, "-v")
	}
	cmd := exec.Command(bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cpu0 := procCPU(b, p.cmd.Process.Pid)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var r result
	var lat []float64
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "> "); ok {
			f := strings.Fields(rest)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				lat = append(lat, v)
			}
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		num := func() float64 { x, _ := strconv.ParseFloat(strings.Fields(v)[0], 64); return x }
		switch k {
		case "Queries completed":
			r.completed = num()
		case "Queries lost":
			r.lost = num()
		case "Queries per second":
			r.qps = num()
		case "Average Latency (s)":
			r.mean = num()
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("dnsperf: %v", err)
	}
	if r.completed > 0 {
		r.cpuPerQuery = (procCPU(b, p.cmd.Process.Pid) - cpu0) / r.completed
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		r.p99 = lat[len(lat)*99/100]
	}
	r.rssKB, r.rssPeakKB = procStatus(b, p.cmd.Process.Pid, "VmRSS:"), procStatus(b, p.cmd.Process.Pid, "VmHWM:")
	return r
}

// procCPU returns the user+system CPU seconds of pid.
func procCPU(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func procStatus(b *testing.B, pid int, key string) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			x, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return x
		}
	}
	return 0
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchEnv reads a positive integer setting of the benchmark from the environment.
func benchEnv(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkDNSPerf runs dnsperf, same query file and client settings, against vigil (a
// subprocess: this test binary serving DNS), CoreDNS (file plugin, the same records) and
// Consul's own DNS (a dev agent with the same services), interleaving the servers round by
// round, and reports the medians. VIGIL_DNSPERF_SECONDS (default 10) and
// VIGIL_DNSPERF_ROUNDS (default 3) set the length.
func BenchmarkDNSPerf(b *testing.B) {
	perf := testutil.Need(b, "dnsperf")
	coredns := testutil.Need(b, "coredns")
	consul := testutil.Need(b, "consul")
	secs, rounds := benchEnv("VIGIL_DNSPERF_SECONDS", 10), benchEnv("VIGIL_DNSPERF_ROUNDS", 3)
	dir := b.TempDir()

	qfile := writeQueries(b, dir)

	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	vcmd := exec.Command(self)
	vcmd.Env = os.Environ()
	peers := []*peer{startVigil(b, "vigil", vcmd)}
	peers = append(peers, startCoreDNS(b, coredns, dir))
	peers = append(peers, startConsul(b, consul, dir))

	for range b.N {
		res := map[string][]result{}
		for round := range rounds {
			for _, p := range peers {
				r := dnsperf(b, perf, p, qfile, secs, false)
				b.Logf("round %d %-7s %8.0f qps  mean %.3f ms  lost %.0f  cpu/query %.2f µs", round, p.name, r.qps, r.mean*1e3, r.lost, r.cpuPerQuery*1e6)
				res[p.name] = append(res[p.name], r)
			}
		}
		p99 := map[string]float64{}
		for _, p := range peers { // a shorter run with per-query output, for the latency percentile
			p99[p.name] = dnsperf(b, perf, p, qfile, max(secs/2, 1), true).p99
		}
		med := func(name string, f func(result) float64) float64 {
			var xs []float64
			for _, r := range res[name] {
				xs = append(xs, f(r))
			}
			return median(xs)
		}
		var tbl strings.Builder
		fmt.Fprintf(&tbl, "\n| server | QPS | mean latency | p99 latency (-v run) | lost | CPU/query | RSS (peak) |\n|---|---|---|---|---|---|---|\n")
		for _, p := range peers {
			n := p.name
			qps := med(n, func(r result) float64 { return r.qps })
			fmt.Fprintf(&tbl, "| %s | %.0f | %.3f ms | %.3f ms | %.0f | %.2f µs | %.1f MiB (%.1f MiB) |\n", n, qps,
				med(n, func(r result) float64 { return r.mean })*1e3, p99[n]*1e3, med(n, func(r result) float64 { return r.lost }),
				med(n, func(r result) float64 { return r.cpuPerQuery })*1e6, res[n][len(res[n])-1].rssKB/1024, res[n][len(res[n])-1].rssPeakKB/1024)
			b.ReportMetric(qps, n+"_qps")
			b.ReportMetric(p99[n]*1e6, n+"_p99_µs")
		}
		// Ratios three ways: of the median QPS; the median of each round's ratio (the servers
		// of a round ran back to back, under the same noise); and of the CPU per query.
		for _, peer := range []string{"coredns", "consul"} {
			qpsOf := func(r result) float64 { return r.qps }
			cpuOf := func(r result) float64 { return r.cpuPerQuery }
			var perRound []float64
			for i := range res["vigil"] {
				perRound = append(perRound, res["vigil"][i].qps/res[peer][i].qps)
			}
			ratio := med("vigil", qpsOf) / med(peer, qpsOf)
			fmt.Fprintf(&tbl, "\nvigil/%s: %.2f× (median QPS), %.2f× (median of per-round ratios), %.2f× less CPU per query",
				peer, ratio, median(perRound), med(peer, cpuOf)/med("vigil", cpuOf))
			b.ReportMetric(ratio, "vigil/"+peer)
			b.ReportMetric(median(perRound), "vigil/"+peer+"_per_round")
		}
		fmt.Fprintf(&tbl, "\n(medians of %d rounds of %d s; dnsperf -c 4 -q 100 -l %d)\n", rounds, secs, secs)
		fmt.Print(tbl.String()) // to stdout whole: the testing package trims long benchmark logs
	}
}

// writeQueries writes dnsperf's query file (A and SRV of every bench service) into dir.
func writeQueries(b *testing.B, dir string) string {
	qfile := filepath.Join(dir, "queries")
	var q strings.Builder
	for _, s := range benchServices {
		fmt.Fprintf(&q, "%s.service.consul A\n%s.service.consul SRV\n", s, s)
	}
	if err := os.WriteFile(qfile, []byte(q.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return qfile
}

// BenchmarkDNSPerfRRL measures what response-rate limiting costs per query: dnsperf against two
// vigil subprocesses, one as shipped (loopback clients are trusted: no limit) and one whose
// clients are all outside allow_recursion (every query takes a token from its network's
// bucket, none is refused), interleaved round by round; medians of QPS and server CPU per query.
func BenchmarkDNSPerfRRL(b *testing.B) {
	perf := testutil.Need(b, "dnsperf")
	secs, rounds := benchEnv("VIGIL_DNSPERF_SECONDS", 5), benchEnv("VIGIL_DNSPERF_ROUNDS", 5)
	dir := b.TempDir()
	qfile := writeQueries(b, dir)
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	var peers []*peer
	for _, rrl := range []bool{false, true} {
		cmd := exec.Command(self)
		cmd.Env = os.Environ()
		name := "vigil"
		if rrl {
			cmd.Env, name = append(cmd.Env, benchRRLEnv+"=1"), "vigil+rrl"
		}
		peers = append(peers, startVigil(b, name, cmd))
	}
	for range b.N {
		res := map[string][]result{}
		var qpsRatio, cpuRatio []float64
		for round := range rounds {
			for _, p := range peers {
				r := dnsperf(b, perf, p, qfile, secs, false)
				b.Logf("round %d %-9s %8.0f qps  lost %.0f  cpu/query %.2f µs", round, p.name, r.qps, r.lost, r.cpuPerQuery*1e6)
				res[p.name] = append(res[p.name], r)
			}
			plain, rrl := res["vigil"][round], res["vigil+rrl"][round]
			qpsRatio = append(qpsRatio, rrl.qps/plain.qps)
			cpuRatio = append(cpuRatio, rrl.cpuPerQuery/plain.cpuPerQuery)
		}
		med := func(name string, f func(result) float64) float64 {
			var xs []float64
			for _, r := range res[name] {
				xs = append(xs, f(r))
			}
			return median(xs)
		}
		var tbl strings.Builder
		fmt.Fprintf(&tbl, "\n| server | QPS | CPU/query | lost |\n|---|---|---|---|\n")
		for _, p := range peers {
			fmt.Fprintf(&tbl, "| %s | %.0f | %.2f µs | %.0f |\n", p.name, med(p.name, func(r result) float64 { return r.qps }),
				med(p.name, func(r result) float64 { return r.cpuPerQuery })*1e6, med(p.name, func(r result) float64 { return r.lost }))
		}
		fmt.Fprintf(&tbl, "\nrrl/plain: %.3f× QPS, %.3f× CPU per query (medians of per-round ratios); CPU per query %+.2f µs (difference of medians)\n",
			median(qpsRatio), median(cpuRatio), (med("vigil+rrl", func(r result) float64 { return r.cpuPerQuery })-med("vigil", func(r result) float64 { return r.cpuPerQuery }))*1e6)
		fmt.Fprintf(&tbl, "(%d rounds of %d s; dnsperf -c 4 -q 100 -l %d)\n", rounds, secs, secs)
		b.ReportMetric(median(cpuRatio), "rrl/plain_cpu")
		b.ReportMetric(median(qpsRatio), "rrl/plain_qps")
		fmt.Print(tbl.String())
	}
}
