package health_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// The benchmark's HTTP instances live in subprocesses (this test binary, re-executed with
// serverEnv="first,count"), perServer instances each, so that no process needs more than the
// 20,000 file descriptors allowed here. Instance i listens on benchAddr(i), all on one port.
const (
	serverEnv = "VIGIL_HEALTH_BENCH_SERVER"
	perServer = 2500
)

func benchAddr(i int) string { return fmt.Sprintf("127.1.%d.%d", i/250, i%250+1) }

// raiseNoFile raises the soft limit of open files to the hard limit.
func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// serveBench is the server subprocess: it prints its port, then serves until stdin closes.
func serveBench() int {
	raiseNoFile()
	var first, count int
	env, closing := strings.CutSuffix(os.Getenv(serverEnv), ",close")
	if _, err := fmt.Sscanf(env, "%d,%d", &first, &count); err != nil {
		fmt.Fprintln(os.Stderr, "bad", serverEnv, err)
		return 2
	}
	var ls []net.Listener
	for try := 0; try < 20 && len(ls) < count; try++ {
		for _, l := range ls {
			l.Close()
		}
		ls = ls[:0]
		l, err := net.Listen("tcp", benchAddr(first)+":0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ls = append(ls, l)
		port := l.Addr().(*net.TCPAddr).Port
		for i := first + 1; i < first+count; i++ {
			l, err := net.Listen("tcp", net.JoinHostPort(benchAddr(i), strconv.Itoa(port)))
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
	}
	if len(ls) < count {
		fmt.Fprintln(os.Stderr, "could not listen on every address")
		return 1
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	srv.SetKeepAlivesEnabled(!closing) // closing: each connection ends after its response
	for _, l := range ls {
		go srv.Serve(l)
	}
	fmt.Println(ls[0].Addr().(*net.TCPAddr).Port)
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = srv.Close()
	return 0
}

// benchServers starts the server subprocesses for n instances and returns each instance.
func benchServers(b *testing.B, n int, closing bool) []discovery.Instance {
	var ins []discovery.Instance
	for first := 0; first < n; first += perServer {
		count := min(perServer, n-first)
		cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
		env := fmt.Sprintf("%s=%d,%d", serverEnv, first, count)
		if closing {
			env += ",close"
		}
		cmd.Env = append(os.Environ(), env)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			b.Fatalf("server subprocess: %v", err)
		}
		port, err := strconv.Atoi(strings.TrimSpace(line))
		if err != nil {
			b.Fatalf("server subprocess said %q", line)
		}
		for i := first; i < first+count; i++ {
			ins = append(ins, discovery.Instance{ID: strconv.Itoa(i), Address: benchAddr(i), Port: port, Weight: 1})
		}
	}
	return ins
}

// countSink counts healthy instances.
type countSink struct {
	mu      sync.Mutex
	st      map[discovery.Key]health.Status
	healthy int
}

func (s *countSink) SetMembership(_ discovery.Membership, st map[discovery.Key]health.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = st
	s.healthy = 0
	for _, x := range st {
		if x.State == health.Healthy {
			s.healthy++
		}
	}
}

func (s *countSink) SetStatus(k discovery.Key, st health.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st[k].State == health.Healthy {
		s.healthy--
	}
	if st.State == health.Healthy {
		s.healthy++
	}
	s.st[k] = st
}

func (s *countSink) probes() (n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.st {
		n += st.Stats.Load().Probes
	}
	return n
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func memInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

// rss is the resident set of this process, from /proc.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkProber probes 1,000 and 10,000 real loopback HTTP instances at a 1 s interval and reports
// the medians of several measurement windows (VIGIL_BENCH_REPEAT, default 3, of VIGIL_BENCH_WINDOW
// seconds, default 10): CPU seconds of this process per 1,000 probes, probes per second achieved
// and scheduled, p99 scheduling lag and memory per instance: heap and stacks (KB/instance), and the
// growth of the resident set (rss-KB/instance, which also counts freed memory not yet returned).
//
// The cases with backend=closing probe servers that close each connection after its response
// (no keep-alive): each probe dials, and the checker holds one dedicated idle watch connection
// per instance; watch=off shows the same without it, so the difference is what the watch costs.
func BenchmarkProber(b *testing.B) {
	raiseNoFile()
	for _, tc := range []struct {
		n              int
		closing, watch bool
	}{{1000, false, true}, {10000, false, true}, {1000, true, true}, {1000, true, false}} {
		name := fmt.Sprintf("instances=%d", tc.n)
		if tc.closing {
			name += fmt.Sprintf(",backend=closing,watch=%v", tc.watch)
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				benchProber(b, tc.n, tc.closing, tc.watch)
			}
		})
	}
}

func benchProber(b *testing.B, n int, closing, watch bool) {
	repeat, window := envInt("VIGIL_BENCH_REPEAT", 3), time.Duration(envInt("VIGIL_BENCH_WINDOW", 10))*time.Second
	ins := benchServers(b, n, closing)
	base, baseRSS := memInUse(), rss()

	chk := health.DefaultCheck()
	chk.Kind = health.KindHTTP
	chk.Watch = watch
	sink := &countSink{}
	members := make(chan discovery.Membership, 1)
	c, err := health.NewChecker(health.Options{Default: chk, Sink: sink, Members: members})
	if err != nil {
		b.Fatal(err)
	}
	var lagMu sync.Mutex
	var lags []time.Duration
	health.SetLagHook(c, func(d time.Duration) {
		lagMu.Lock()
		lags = append(lags, d)
		lagMu.Unlock()
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	members <- discovery.Membership{Upstreams: map[string]*discovery.Upstream{"bench": {Name: "bench", Instances: ins}}, Ready: true}

	deadline := time.Now().Add(30 * time.Second)
	for {
		sink.mu.Lock()
		h := sink.healthy
		sink.mu.Unlock()
		if h == n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d instances healthy after 30s", h, n)
		}
		time.Sleep(100 * time.Millisecond) // polling a benchmark's progress, not synchronising a test
	}
	time.Sleep(3 * time.Second) // warm-up: the first probes' spread evens out

	var cpu, rate, lag99, mem, rssPer []float64
	for range repeat {
		lagMu.Lock()
		lags = lags[:0]
		lagMu.Unlock()
		c0, p0, t0 := cpuTime(), sink.probes(), time.Now()
		time.Sleep(window)
		c1, p1, t1 := cpuTime(), sink.probes(), time.Now()
		probes := float64(p1 - p0)
		cpu = append(cpu, (c1-c0).Seconds()/(probes/1000))
		rate = append(rate, probes/t1.Sub(t0).Seconds())
		lagMu.Lock()
		slices.Sort(lags)
		lag99 = append(lag99, float64(lags[len(lags)*99/100])/float64(time.Millisecond))
		lagMu.Unlock()
		mem = append(mem, float64(memInUse()-base)/float64(n)/1024)
		rssPer = append(rssPer, float64(rss()-baseRSS)/float64(n)/1024)
		b.Logf("n=%d: %.2f cores, %.0f probes/s", n, (c1-c0).Seconds()/t1.Sub(t0).Seconds(), probes/t1.Sub(t0).Seconds())
	}
	b.ReportMetric(median(cpu), "cpu-s/1k-probes")
	b.ReportMetric(median(cpu)*median(rate)/1000, "cores")
	b.ReportMetric(median(rate), "probes/s")
	b.ReportMetric(float64(n)/chk.Interval.Seconds(), "scheduled-probes/s")
	b.ReportMetric(median(lag99), "p99-lag-ms")
	b.ReportMetric(median(mem), "KB/instance")
	b.ReportMetric(median(rssPer), "rss-KB/instance")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
