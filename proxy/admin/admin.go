// Package admin serves vigil's admin HTTP API: health, readiness, metrics and the endpoint table as JSON.
package admin

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vigil-sidecar/vigil/internal/field"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

//go:embed dashboard.html
var dashboard []byte

// Config configures the admin server.
type Config struct {
	// Listen is the address of the admin API, dashboard and /metrics (default 127.0.0.1:9480).
	Listen string `yaml:"listen"`
	// AllowedHosts are the host names, besides IP addresses and localhost, that requests may
	// name in their Host header, e.g. the node's name for remote scraping (default: none).
	AllowedHosts []string `yaml:"allowed_hosts"`
	// Control configures the runtime control endpoints (control.go).
	Control `yaml:",inline"`
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs field.Errors
	if err := field.HostPort(c.Listen, true); err != nil {
		if strings.Contains(err.Error(), "host must be") {
			errs.Addf("listen", "%v (the admin API has no authentication: keep it on loopback)", err)
		} else {
			errs.Addf("listen", "%v", err)
		}
	}
	for i, h := range c.AllowedHosts {
		if h == "" || strings.ContainsAny(h, ":/ ") {
			errs.Addf(fmt.Sprintf("allowed_hosts[%d]", i), "%q must be a host name, without scheme or port", h)
		}
	}
	return errs.Err()
}

// Snapshotter gives the current endpoint table snapshot.
type Snapshotter interface{ Snapshot() *table.Snapshot }

// Server is the admin HTTP server.
type Server struct {
	cfg     Config
	table   Snapshotter
	gather  prometheus.Gatherer
	log     *slog.Logger
	handler http.Handler
	ctl     controlPtr // nil: control endpoints off
	hist    *history
	hub     *hub
	done    chan struct{} // closed when Run's context ends: event streams end
	stop    sync.Once
	// OnListen, if set, is called with the bound address before serving (tests listen on :0).
	OnListen func(net.Addr)
}

// New returns a Server that reads t and exposes the metrics of g.
func New(cfg Config, t Snapshotter, g prometheus.Gatherer, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, table: t, gather: g, log: log, hist: newHistory(), done: make(chan struct{}),
		hub: &hub{max: DefaultMaxSubscribers, subs: map[chan []byte]struct{}{}}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		w.Write(dashboard)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)}))
	mux.HandleFunc("GET /v1/upstreams", s.upstreams)
	mux.HandleFunc("GET /v1/upstreams/{name}", s.upstream)
	s.controlRoutes(mux)
	mux.HandleFunc("GET /v1/events", s.events)
	hosts := cfg.AllowedHosts
	if h, _, err := net.SplitHostPort(cfg.Listen); err == nil {
		hosts = append([]string{h}, hosts...)
	}
	s.handler = guardHosts(hosts, mux)
	return s
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Run listens and serves until ctx ends, then shuts down within a second.
func (s *Server) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("admin: listen %s: %w", s.cfg.Listen, err)
	}
	if s.OnListen != nil {
		s.OnListen(l.Addr())
	}
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); s.watch(wctx) }()
	defer func() { stopWatch(); <-watched }()
	s.log.Info("admin: serving", "addr", l.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("admin: serve: %w", err)
	case <-ctx.Done():
	}
	s.stop.Do(func() { close(s.done) }) // event streams end, so that Shutdown finds their connections idle
	sctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: serve: %w", err)
	}
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	snap := s.table.Snapshot()
	if snap.Ready {
		fmt.Fprintln(w, "ready")
		return
	}
	waiting := 0
	for _, u := range snap.Upstreams {
		for i := range u.Instances {
			if u.Instances[i].State == table.Unknown {
				waiting++
			}
		}
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "not ready: %d instances awaiting their first probe, or discovery not synced\n", waiting)
}

func (s *Server) upstreams(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.view())
}

func (s *Server) upstream(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	u := s.table.Snapshot().Lookup(name)
	if u == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no upstream %q", name)})
		return
	}
	writeJSON(w, http.StatusOK, upstreamJSON(u, time.Now(), s.hist))
}

// writeJSON encodes v first, so that an encoding error is a 500 rather than a truncated 200.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, "admin: encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}
