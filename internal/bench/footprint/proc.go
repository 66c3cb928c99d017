// Package footprint measures what vigil costs a pod (CPU per probe, scheduling lag, memory, idle
// CPU) side by side with a Consul agent; the benchmark in this package runs it (make bench-footprint).
package footprint

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cpuNS is the CPU time a process has used, in ns: the sum over its threads of the first field of
// /proc/PID/task/TID/schedstat (the same on-CPU time utime+stime are scaled to, without their 10 ms
// clock-tick granularity, which is coarser than 30 instances' CPU in a short window).
func cpuNS(pid int) (int64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("footprint: no threads of %d", pid)
	}
	var sum int64
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended
		}
		f := strings.Fields(string(data))
		if len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			sum += n
		}
	}
	return sum, nil
}

// rssKB is VmRSS of a process in KB.
func rssKB(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// proc is a started child process, killed by SIGKILL when the benchmark process dies.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func start(log io.Writer, name string, args ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("footprint: start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// backend is a backend process serving n instances of one kind on one port.
type backend struct {
	kind string
	port int
	p    *proc
	in   io.WriteCloser
	out  *bufio.Reader
	mu   sync.Mutex
}

func startBackend(bin, kind string, n int) (*backend, error) {
	cmd := exec.Command(bin, "-kind", kind, "-n", strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("footprint: start backend: %w", err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	be := &backend{kind: kind, p: p, in: in, out: bufio.NewReader(out)}
	line, err := be.out.ReadString('\n')
	if _, serr := fmt.Sscanf(line, "port %d", &be.port); err != nil || serr != nil {
		p.kill()
		return nil, fmt.Errorf("footprint: backend %s did not start: %q %v", kind, line, err)
	}
	return be, nil
}

// count is the number of probes the backend has answered.
func (be *backend) count() (int64, error) {
	be.mu.Lock()
	defer be.mu.Unlock()
	if _, err := io.WriteString(be.in, "count\n"); err != nil {
		return 0, err
	}
	line, err := be.out.ReadString('\n')
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(line), 10, 64)
}

func (be *backend) close() {
	be.in.Close()
	select {
	case <-be.p.done:
	case <-time.After(5 * time.Second):
		be.p.kill()
	}
}

// instanceAddr is the address of instance i (as the backend listens).
func instanceAddr(i int) string { return fmt.Sprintf("127.14.%d.%d", i/250, i%250+1) }

// freePort returns a port that was free on 127.0.0.1 a moment ago (for peers that take port numbers).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitHTTP waits until url answers 200, at most d.
func waitHTTP(url string, d time.Duration, done <-chan struct{}) error {
	deadline := time.Now().Add(d)
	for {
		resp, err := http.Get(url)
		if err == nil {
			ok := resp.StatusCode == 200
			resp.Body.Close()
			if ok {
				return nil
			}
		}
		select {
		case <-done:
			return fmt.Errorf("footprint: process ended before %s answered", url)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("footprint: %s not up within %s", url, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lagBuckets reads the cumulative buckets of vigil_health_schedule_lag_seconds from /metrics.
func lagBuckets(admin string) (map[float64]float64, error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[float64]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), `vigil_health_schedule_lag_seconds_bucket{le="`)
		if !ok {
			continue
		}
		le, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		l, err1 := strconv.ParseFloat(le, 64)
		v, err2 := strconv.ParseFloat(val, 64)
		if err1 == nil && err2 == nil {
			m[l] = v
		}
	}
	return m, sc.Err()
}

// p99 is the upper bound of the bucket holding the 99th percentile of the observations between
// two scrapes, in seconds (+Inf past the last bucket; NaN with none).
func p99(before, after map[float64]float64) float64 {
	les := make([]float64, 0, len(after))
	for le := range after {
		les = append(les, le)
	}
	slices.Sort(les)
	total := after[math.Inf(1)] - before[math.Inf(1)]
	if total <= 0 {
		return math.NaN()
	}
	for _, le := range les {
		if after[le]-before[le] >= 0.99*total {
			return le
		}
	}
	return math.Inf(1)
}

func median(xs []float64) float64 {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
