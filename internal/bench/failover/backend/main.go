// Command backend is an upstream instance for the failover benchmark: a Go HTTP server (keep-alive)
// or a gRPC health server, run as its own process so that SIGKILL and SIGSTOP are real.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

func main() {
	kind := flag.String("kind", "http", "http (keep-alive) | grpc (grpc.health.v1)")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	id := flag.String("id", "", "instance name, the body of GET /id")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
	switch *kind {
	case "grpc":
		// Each answer names the instance in the header "instance", for a client that does not
		// know where its call went (through an L4 forwarder).
		s := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			_ = grpc.SetHeader(ctx, metadata.Pairs("instance", *id))
			return h(ctx, req)
		}))
		healthpb.RegisterHealthServer(s, health.NewServer())
		err = s.Serve(l)
	default:
		err = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, *id)
		}))
	}
	fmt.Fprintln(os.Stderr, "backend:", err)
	os.Exit(1)
}
