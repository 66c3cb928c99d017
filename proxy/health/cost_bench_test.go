package health_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// costServerEnv re-executes this test binary as the backend of one probe kind: it listens on
// 127.0.0.1, prints its port, and serves until stdin closes. Every instance of the benchmark shares
// that one address (instances are told apart by their IDs), so the backend holds every kept
// connection and the benchmark's process holds only the prober's side.
const costServerEnv = "VIGIL_HEALTH_COST_SERVER"

func init() {
	if k := os.Getenv(costServerEnv); k != "" {
		os.Exit(serveCost(k))
	}
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func serveCost(kind string) int {
	raiseNoFile()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if kind == health.KindHTTPS || kind == health.KindTLS {
		cert, err := selfSigned()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}})
	}
	switch kind {
	case health.KindGRPC:
		s := grpc.NewServer()
		healthpb.RegisterHealthServer(s, grpchealth.NewServer()) // "" is SERVING
		go s.Serve(l)
		defer s.Stop()
	default: // tcp and tls probes only connect (and handshake); http and https get "ok"
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
			ErrorLog: log.New(io.Discard, "", 0)} // a tls probe resets the connection after its handshake
		go srv.Serve(l)
		defer srv.Close()
	}
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

func costServer(b *testing.B, kind string) int {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), costServerEnv+"="+kind)
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
		b.Fatalf("%s backend: %v", kind, err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		b.Fatalf("%s backend said %q", kind, line)
	}
	return port
}

// BenchmarkInstanceCost reports vigil's memory per probed instance for every probe kind, with
// VIGIL_COST_INSTANCES (default 10,000) healthy instances of one real loopback backend each:
// the growth of Go heap+stacks in use after a GC (KB/instance) and of the resident set
// (rss-KB/instance), once every instance is healthy and has been probed at least twice more.
// The interval is VIGIL_COST_INTERVAL seconds (default 15: at 5, the 2,000 TLS handshakes a second
// did not complete on two shared cores; what an instance keeps between probes does not depend on it).
func BenchmarkInstanceCost(b *testing.B) {
	raiseNoFile()
	n := envInt("VIGIL_COST_INSTANCES", 10000)
	interval := time.Duration(envInt("VIGIL_COST_INTERVAL", 15)) * time.Second
	for _, kind := range []string{health.KindTCP, health.KindTLS, health.KindHTTP, health.KindHTTPS, health.KindGRPC} {
		b.Run("kind="+kind, func(b *testing.B) {
			for range b.N {
				benchCost(b, kind, n, interval)
			}
		})
	}
}

func benchCost(b *testing.B, kind string, n int, interval time.Duration) {
	port := costServer(b, kind)
	ins := make([]discovery.Instance, n)
	for i := range ins {
		ins[i] = discovery.Instance{ID: strconv.Itoa(i), Address: "127.0.0.1", Port: port, Weight: 1}
	}
	base, baseRSS := memInUse(), rss()

	chk := health.DefaultCheck()
	chk.Kind = kind
	chk.Interval, chk.UnhealthyInterval, chk.Timeout = interval, interval, min(interval/2, 5*time.Second)
	chk.TLS.InsecureSkipVerify = true
	sink := &countSink{}
	members := make(chan discovery.Membership, 1)
	c, err := health.NewChecker(health.Options{Default: chk, Sink: sink, Members: members})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	// Instances arrive in ten steps over one interval, as a fleet's do: 10,000 TLS handshakes at
	// the same instant overflow the backend's accept queue, and the failed probes stay in step.
	for k := 1; k <= 10; k++ {
		members <- discovery.Membership{Upstreams: map[string]*discovery.Upstream{"bench": {Name: "bench", Instances: ins[:n*k/10]}}, Ready: true}
		time.Sleep(interval / 10) // pacing the benchmark's load, not synchronising
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		sink.mu.Lock()
		h := sink.healthy
		sink.mu.Unlock()
		if h == n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: %d of %d instances healthy after 2m", kind, h, n)
		}
		time.Sleep(100 * time.Millisecond) // polling a benchmark's progress, not synchronising a test
	}
	p0 := sink.probes()
	for sink.probes() < p0+2*uint64(n) && time.Now().Before(deadline.Add(time.Minute)) {
		time.Sleep(100 * time.Millisecond)
	}
	mem := float64(int64(memInUse())-int64(base)) / float64(n) / 1024
	rssPer := float64(int64(rss())-int64(baseRSS)) / float64(n) / 1024
	b.Logf("kind=%s n=%d: heap+stacks %.1f KB/instance, RSS %.1f KB/instance", kind, n, mem, rssPer)
	b.ReportMetric(mem, "KB/instance")
	b.ReportMetric(rssPer, "rss-KB/instance")
}
