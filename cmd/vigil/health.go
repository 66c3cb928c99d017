package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// cmdHealth GETs /healthz (or -path) from a running vigil's admin API and exits 0 on 200, 1
// otherwise: a container healthcheck or Kubernetes exec probe that needs no shell or curl, so it
// works in a scratch or distroless image and with the admin API on loopback.
func cmdHealth(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9480", "admin address of the running vigil")
	path := fs.String("path", "/healthz", "path to GET: /healthz (alive) or /readyz (ready to serve)")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || !strings.HasPrefix(*path, "/") || *timeout <= 0 {
		fmt.Fprintln(stderr, "vigil: health: usage: vigil health [-addr HOST:PORT] [-path /healthz|/readyz] [-timeout D]")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	url := "http://" + *addr + *path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "vigil: health: %v\n", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "vigil: health: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "vigil: health: GET %s: %s: %s\n", url, resp.Status, msg)
		return 1
	}
	fmt.Fprintln(stdout, msg)
	return 0
}
