package failover

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// BenchmarkIdleConnCost: what 1,000 idle watch connections (one per sidecar, as 1,000 vigils would
// hold) cost one backend of each kind: resident memory and threads of the backend process, read
// from /proc before and after. Each connection carries nothing. (For the Go keep-alive and gRPC
// kinds the watched connection is the probe's own, which exists without the watch too; only a
// backend that closes each connection, like python's, gets a dedicated one.)
func BenchmarkIdleConnCost(b *testing.B) {
	testutil.Need(b, "python3")
	dir := b.TempDir()
	backend := filepath.Join(dir, "backend")
	if msg, err := execGo("build", "-o", backend, "github.com/vigil-sidecar/vigil/internal/bench/failover/backend"); err != nil {
		b.Fatalf("go build: %v\n%s", err, msg)
	}
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	const conns = 1000
	for k := range numKinds {
		b.Run("backend="+k.String(), func(b *testing.B) {
			for b.Loop() {
				ins, err := newInstances(k, backend, dir)
				if err != nil {
					b.Fatal(err)
				}
				in := ins[0]
				if err := in.Start(context.Background()); err != nil {
					b.Fatal(err)
				}
				rss0, thr0 := procStatus(b, in.cmd.Process.Pid)
				var cs []net.Conn
				for range conns {
					c, err := net.Dial("tcp", in.Addr())
					if err != nil {
						b.Fatal(err)
					}
					cs = append(cs, c)
					time.Sleep(time.Millisecond) // 1,000 sidecars do not connect at once; python's backlog is 5
				}
				time.Sleep(2 * time.Second) // the backend accepts them all
				rss1, thr1 := procStatus(b, in.cmd.Process.Pid)
				for _, c := range cs {
					c.Close()
				}
				_ = in.Kill()
				b.ReportMetric(float64(rss1-rss0)/conns, "rss-KB/conn")
				b.ReportMetric(float64(thr1-thr0)/conns, "threads/conn")
				b.Logf("%s: %d idle connections: RSS %d -> %d KB, threads %d -> %d", k, conns, rss0, rss1, thr0, thr1)
			}
		})
	}
}

// procStatus returns VmRSS in KB and Threads of a process.
func procStatus(b *testing.B, pid int) (rss, threads int) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss, _ = strconv.Atoi(f[1])
		case "Threads:":
			threads, _ = strconv.Atoi(f[1])
		}
	}
	return rss, threads
}
