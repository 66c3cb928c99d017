// Command backend serves the footprint benchmark's instances of one probe kind in one process.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Instance i listens on addr(i), all instances on one port. Each probe is counted: an HTTP
// request, a gRPC call, an accepted TCP connection, a completed TLS handshake. A line "count" on
// stdin is answered with the count on stdout; stdin closed ends the process.
func addr(i int) string { return fmt.Sprintf("127.14.%d.%d", i/250, i%250+1) }

func main() {
	kind := flag.String("kind", "http", "http | https | grpc | tcp | tls")
	n := flag.Int("n", 30, "instances")
	flag.Parse()
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	ls, err := listen(*n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
	var count atomic.Int64
	cert := selfSigned()
	tcfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		count.Add(1)
		io.WriteString(w, "ok")
	})
	switch *kind {
	case "http", "https":
		// Handshakes cut short when a prober is killed are no news here.
		srv := &http.Server{Handler: handler, IdleTimeout: time.Minute, ErrorLog: log.New(io.Discard, "", 0)}
		for _, l := range ls {
			if *kind == "https" {
				l = tls.NewListener(l, tcfg)
			}
			go srv.Serve(l)
		}
	case "grpc":
		s := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			count.Add(1)
			return h(ctx, req)
		}))
		healthpb.RegisterHealthServer(s, health.NewServer())
		for _, l := range ls {
			go s.Serve(l)
		}
	case "tcp", "tls":
		for _, l := range ls {
			go accept(l, *kind == "tls", tcfg, &count)
		}
	default:
		fmt.Fprintln(os.Stderr, "backend: unknown kind", *kind)
		os.Exit(2)
	}
	fmt.Printf("port %d\n", ls[0].Addr().(*net.TCPAddr).Port)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		fmt.Printf("%d\n", count.Load())
	}
}

// accept counts each connection (tcp) or each completed handshake (tls) and holds the
// connection until the client closes it.
func accept(l net.Listener, useTLS bool, cfg *tls.Config, count *atomic.Int64) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if useTLS {
				tc := tls.Server(c, cfg)
				_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.Handshake() != nil {
					return
				}
				_ = tc.SetDeadline(time.Time{})
			}
			count.Add(1)
			_, _ = io.Copy(io.Discard, c)
		}()
	}
}

// listen listens on addr(0..n-1), all on one port, trying other ports if one is taken.
func listen(n int) ([]net.Listener, error) {
	for try := 0; try < 20; try++ {
		l0, err := net.Listen("tcp", addr(0)+":0")
		if err != nil {
			return nil, err
		}
		ls := []net.Listener{l0}
		port := strconv.Itoa(l0.Addr().(*net.TCPAddr).Port)
		for i := 1; i < n; i++ {
			l, err := net.Listen("tcp", net.JoinHostPort(addr(i), port))
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
		if len(ls) == n {
			return ls, nil
		}
		for _, l := range ls {
			l.Close()
		}
	}
	return nil, fmt.Errorf("could not listen on %d addresses on one port", n)
}

// selfSigned makes a P-256 certificate for the instances (probes skip its verification).
func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "footprint"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
