package xds

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// The benchmark scenario: 1,000 upstreams × 10 instances, 200 ADS clients (half delta,
// half state of the world) subscribed to every cluster and endpoint set; one instance's
// health flips at a time. The server (vigil, or the naive SnapshotCache baseline) runs in
// a child process, so that its CPU and memory are its own.
const (
	benchUpstreams = 1000
	benchInstances = 10
	benchClients   = 200
	benchChildEnv  = "VIGIL_XDS_BENCH_CHILD"
)

func benchName(u int) string { return fmt.Sprintf("u-%04d", u) }

func benchTable() *table.Table {
	tb := table.New(table.Config{Zone: "zone-a", Default: table.DefaultPolicy()})
	m := discovery.Membership{Upstreams: map[string]*discovery.Upstream{}, Ready: true}
	st := map[discovery.Key]health.Status{}
	for u := range benchUpstreams {
		name := benchName(u)
		ins := make([]discovery.Instance, benchInstances)
		for i := range ins {
			ins[i] = discovery.Instance{ID: fmt.Sprintf("i%d", i), Address: "127.0.0.1", Port: 20000 + i,
				Zone: []string{"zone-a", "zone-b"}[i%2], Datacenter: "dc1", Weight: 1}
			st[discovery.Key{Upstream: name, ID: ins[i].ID}] = health.Status{State: health.Healthy, Since: time.Unix(1, 0)}
		}
		m.Upstreams[name] = &discovery.Upstream{Name: name, Instances: ins}
	}
	tb.SetMembership(m, st)
	return tb
}

// benchTarget is the change the clients wait for: an endpoint's new health status.
type benchTarget struct {
	gen     int64
	cluster string
	port    uint32
	want    corev3.HealthStatus
}

type benchSeen struct {
	gen int64
	at  int64 // unix ns
}

type benchClient struct {
	delta bool
	bytes atomic.Int64
	// synced is closed once the client has every cluster and endpoint set.
	synced chan struct{}
}

// run subscribes to every cluster and endpoint set over ADS and ACKs every response.
func (c *benchClient) run(ctx context.Context, cc *grpc.ClientConn, id int, target *atomic.Pointer[benchTarget], seen chan<- benchSeen) error {
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
	n := &corev3.Node{Id: fmt.Sprintf("bench-%d", id), UserAgentName: "vigil-bench"}
	types := []string{resourcev3.ClusterType, resourcev3.EndpointType}
	have := map[string]map[string]bool{}
	for _, t := range types {
		have[t] = map[string]bool{}
	}
	var doneGen int64
	check := func(name string, res func() *anypb.Any) {
		tg := target.Load()
		if tg == nil || tg.gen == doneGen || name != tg.cluster {
			return
		}
		var cla endpointv3.ClusterLoadAssignment
		if err := res().UnmarshalTo(&cla); err != nil {
			return
		}
		for _, l := range cla.Endpoints {
			for _, e := range l.LbEndpoints {
				if e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() == tg.port && e.HealthStatus == tg.want {
					doneGen = tg.gen
					seen <- benchSeen{tg.gen, time.Now().UnixNano()}
					return
				}
			}
		}
	}
	markSynced := func() {
		select {
		case <-c.synced:
		default:
			if len(have[resourcev3.ClusterType]) == benchUpstreams && len(have[resourcev3.EndpointType]) == benchUpstreams {
				close(c.synced)
			}
		}
	}
	if c.delta {
		st, err := ads.DeltaAggregatedResources(ctx)
		if err != nil {
			return err
		}
		for _, t := range types {
			if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: n, TypeUrl: t, ResourceNamesSubscribe: []string{"*"}}); err != nil {
				return err
			}
		}
		for {
			r, err := st.Recv()
			if err != nil {
				return err
			}
			c.bytes.Add(int64(proto.Size(r)))
			for _, x := range r.Resources {
				have[r.TypeUrl][x.Name] = true
				if r.TypeUrl == resourcev3.EndpointType {
					check(x.Name, x.GetResource)
				}
			}
			markSynced()
			if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
				return err
			}
		}
	}
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	for _, t := range types {
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: t}); err != nil {
			return err
		}
	}
	for {
		r, err := st.Recv()
		if err != nil {
			return err
		}
		c.bytes.Add(int64(proto.Size(r)))
		for _, a := range r.Resources {
			name := firstString(a.Value) // cluster_name and name are field 1 of CLA and Cluster
			have[r.TypeUrl][name] = true
			if r.TypeUrl == resourcev3.EndpointType {
				check(name, func() *anypb.Any { return a })
			}
		}
		markSynced()
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: r.TypeUrl, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
			return err
		}
	}
}

// firstString returns field 1 of a serialized message when it is a string, without a full decode.
func firstString(b []byte) string {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || num != 1 || typ != protowire.BytesType {
		return ""
	}
	v, m := protowire.ConsumeBytes(b[n:])
	if m < 0 {
		return ""
	}
	return string(v)
}

type benchResult struct {
	p50, p99, max time.Duration
	deltaBytes    float64 // per client per change
	sotwBytes     float64
	cpuPerChange  time.Duration
	syncCPU       time.Duration
	rssMB, hwmMB  float64
	flips         int
}

// benchChild starts the server process of the given mode and returns its stdin, stdout and pid.
type benchChild struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startBenchChild starts the server process of the given mode; it listens on a port of its own
// and reports the address on its first line ("ready ADDR").
func startBenchChild(b *testing.B, mode string) (*benchChild, string) {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"="+mode)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &benchChild{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	if !c.out.Scan() {
		b.Fatalf("%s child: %v", mode, c.out.Err())
	}
	addr, ok := strings.CutPrefix(c.out.Text(), "ready ")
	if !ok {
		b.Fatalf("%s child: %q", mode, c.out.Text())
	}
	return c, addr
}

// procStats returns a process's CPU time (user+system) and its resident and peak memory in MB.
func procStats(pid int) (cpu time.Duration, rss, hwm float64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		stt, _ := strconv.ParseInt(f[12], 10, 64)
		cpu = time.Duration(ut+stt) * 10 * time.Millisecond // USER_HZ = 100
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
				kb, _ := strconv.ParseFloat(f[1], 64)
				if f[0] == "VmRSS:" {
					rss = kb / 1024
				} else {
					hwm = kb / 1024
				}
			}
		}
	}
	return cpu, rss, hwm
}

func runBenchScenario(b *testing.B, mode string, flips int) benchResult {
	child, listen := startBenchChild(b, mode)
	defer func() {
		child.in.Close()
		child.cmd.Wait()
	}()
	pid := child.cmd.Process.Pid
	cpu0, _, _ := procStats(pid)

	ctx, cancel := context.WithCancel(context.Background())
	var target atomic.Pointer[benchTarget]
	seen := make(chan benchSeen, benchClients*2)
	clients := make([]*benchClient, benchClients)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for i := range clients {
		c := &benchClient{delta: i%2 == 0, synced: make(chan struct{})}
		clients[i] = c
		cc, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cc.Close()
			if err := c.run(ctx, cc, i, &target, seen); err != nil && ctx.Err() == nil {
				b.Errorf("client %d: %v", i, err)
			}
		}()
	}
	syncDeadline := time.After(2 * time.Minute)
	for i, c := range clients {
		select {
		case <-c.synced:
		case <-syncDeadline:
			b.Fatalf("%s: client %d not synced within 2m", mode, i)
		}
	}
	total := func(delta bool) (n int64) {
		for _, c := range clients {
			if c.delta == delta {
				n += c.bytes.Load()
			}
		}
		return n
	}
	// waitStable waits until no client receives anything for 100ms (bounded).
	waitStable := func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		prev, still := int64(-1), 0
		for deadline := time.Now().Add(10 * time.Second); still < 5 && time.Now().Before(deadline); {
			<-tick.C
			if n := total(true) + total(false); n == prev {
				still++
			} else {
				prev, still = n, 0
			}
		}
	}
	waitStable()
	beforeDelta, beforeSotw := total(true), total(false)
	cpu1, _, _ := procStats(pid)

	var lat []time.Duration
	down := map[string]bool{}
	const warmup = 2
	for f := range flips + warmup {
		u, in := benchName((f*7919+13)%benchUpstreams), f%benchInstances
		key := u + "/" + strconv.Itoa(in)
		want, state := corev3.HealthStatus_UNHEALTHY, "unhealthy"
		if down[key] {
			want, state = corev3.HealthStatus_HEALTHY, "healthy"
		}
		down[key] = !down[key]
		target.Store(&benchTarget{gen: int64(f + 1), cluster: u, port: uint32(20000 + in), want: want})
		fmt.Fprintf(child.in, "flip %s i%d %s\n", u, in, state)
		if !child.out.Scan() {
			b.Fatalf("%s child: %v", mode, child.out.Err())
		}
		t0, _ := strconv.ParseInt(child.out.Text(), 10, 64)
		var last int64
		timeout := time.After(time.Minute)
		for got := 0; got < benchClients; {
			select {
			case s := <-seen:
				if s.gen == int64(f+1) {
					got++
					last = max(last, s.at)
				}
			case <-timeout:
				b.Fatalf("%s: flip %d: %d of %d clients within 1m", mode, f, got, benchClients)
			}
		}
		if f >= warmup {
			lat = append(lat, time.Duration(last-t0))
		}
	}
	waitStable()
	deltaBytes, sotwBytes := total(true)-beforeDelta, total(false)-beforeSotw
	cpu2, rss, hwm := procStats(pid)
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	half := float64(benchClients / 2)
	return benchResult{
		p50: pct(0.5), p99: pct(0.99), max: lat[len(lat)-1],
		deltaBytes: float64(deltaBytes) / half / float64(flips+warmup), sotwBytes: float64(sotwBytes) / half / float64(flips+warmup),
		cpuPerChange: (cpu2 - cpu1) / time.Duration(flips+warmup), syncCPU: cpu1 - cpu0,
		rssMB: rss, hwmMB: hwm, flips: flips,
	}
}

// runBenchChild is the server process of the benchmark: it serves the benchmark table as
// vigil or as the baseline, and flips instances on command ("flip <upstream> <id> <state>"),
// answering each with the time of the change.
func runBenchChild(mode string) int {
	tb := benchTable()
	if p := os.Getenv("VIGIL_XDS_BENCH_CPUPROFILE"); p != "" && mode == "vigil" {
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	var listen string
	switch mode {
	case "vigil":
		cfg := DefaultConfig()
		cfg.Listen = "127.0.0.1:0"
		s, err := New(cfg, tb, nil, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go func() { done <- s.Run(ctx) }()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for deadline := time.Now().Add(30 * time.Second); s.Addr() == nil; <-tick.C {
			if time.Now().After(deadline) {
				fmt.Fprintln(os.Stderr, "server not listening")
				return 1
			}
		}
		listen = s.Addr().String()
	case "baseline":
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		listen = lis.Addr().String()
		go func() { done <- runBaseline(ctx, tb, lis) }()
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n", mode)
		return 1
	}
	fmt.Println("ready", listen)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 4 || f[0] != "flip" {
			continue
		}
		st := health.Healthy
		if f[3] == "unhealthy" {
			st = health.Unhealthy
		}
		t0 := time.Now().UnixNano()
		tb.SetStatus(discovery.Key{Upstream: f[1], ID: f[2]}, health.Status{State: st, Since: time.Now()})
		fmt.Println(t0)
	}
	if p := os.Getenv("VIGIL_XDS_BENCH_MEMPROFILE"); p != "" && mode == "vigil" {
		if f, err := os.Create(p); err == nil {
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// BenchmarkXDSPush measures how fast one instance's health change reaches 200 ADS clients
// (100 delta, 100 state of the world) of 1,000 upstreams × 10 instances, and what it costs,
// for vigil and, side by side, a naive SnapshotCache control plane.
func BenchmarkXDSPush(b *testing.B) {
	for range b.N {
		for _, mode := range []struct {
			name  string
			flips int
		}{{"vigil", 40}, {"baseline", 10}} {
			r := runBenchScenario(b, mode.name, mode.flips)
			b.Logf("%s: %d changes: to all %d clients p50 %s p99 %s max %s; bytes per client per change: delta %.0f, sotw %.0f; "+
				"server CPU %s per change, %s for the initial sync; RSS %.0f MB (peak %.0f MB)",
				mode.name, r.flips, benchClients, r.p50, r.p99, r.max, r.deltaBytes, r.sotwBytes,
				r.cpuPerChange, r.syncCPU, r.rssMB, r.hwmMB)
			b.ReportMetric(float64(r.p50.Microseconds())/1000, mode.name+"-p50-ms")
			b.ReportMetric(float64(r.p99.Microseconds())/1000, mode.name+"-p99-ms")
			b.ReportMetric(r.deltaBytes, mode.name+"-delta-B/change")
			b.ReportMetric(r.sotwBytes, mode.name+"-sotw-B/change")
			b.ReportMetric(float64(r.cpuPerChange.Microseconds())/1000, mode.name+"-cpu-ms/change")
			b.ReportMetric(r.rssMB, mode.name+"-rss-MB")
		}
	}
}
