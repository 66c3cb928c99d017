package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigil-sidecar/vigil/configs"
	hc "github.com/vigil-sidecar/vigil/proxy/health"
)

// Demo schedule: every demoPeriod the next instance fails for demoOutage, alternating between a crash
// (the process dies: listener and connections gone) and sickness (HTTP 503, gRPC NOT_SERVING).
const (
	demoPeriod = 12 * time.Second
	demoOutage = 6 * time.Second
)

// demo serves the configured loopback instances, each as its upstream's check kind expects.
type demo struct {
	log   *slog.Logger
	insts []*demoInstance
}

type demoInstance struct {
	upstream, kind, addr string

	mu    sync.Mutex
	stop  func()         // stops the running server; nil while crashed
	sick  bool           // answers, but as unhealthy
	grpcH *health.Server // the gRPC health service, while running
}

func newDemo(cfg *configs.Config, log *slog.Logger) *demo {
	d := &demo{log: log}
	for _, u := range cfg.Upstreams {
		for _, in := range u.Instances {
			if ip := net.ParseIP(in.Address); ip == nil || !ip.IsLoopback() {
				continue // never serve anything but loopback
			}
			d.insts = append(d.insts, &demoInstance{upstream: u.Name, kind: u.Check.Kind,
				addr: net.JoinHostPort(in.Address, fmt.Sprint(in.Port))})
		}
	}
	return d
}

// listen starts every instance, so that a port in use fails vigil at start.
func (d *demo) listen() error {
	for _, in := range d.insts {
		if err := in.start(); err != nil {
			d.close()
			return fmt.Errorf("demo: %s %s: %w", in.upstream, in.addr, err)
		}
	}
	d.log.Info("demo: serving instances", "count", len(d.insts), "period", demoPeriod, "outage", demoOutage)
	return nil
}

func (d *demo) close() {
	for _, in := range d.insts {
		in.crash()
	}
}

// Run fails and recovers one instance after the other until ctx ends.
func (d *demo) Run(ctx context.Context) error {
	defer d.close()
	if len(d.insts) == 0 {
		<-ctx.Done()
		return nil
	}
	tick := time.NewTicker(demoPeriod)
	defer tick.Stop()
	var recover <-chan time.Time
	var down *demoInstance
	for i := 0; ; {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if down != nil {
				continue
			}
			down = d.insts[i%len(d.insts)]
			crash := i%2 == 0 || down.kind == hc.KindTCP || down.kind == hc.KindTLS
			if crash {
				d.log.Info("demo: crashing instance", "upstream", down.upstream, "addr", down.addr)
				down.crash()
			} else {
				d.log.Info("demo: instance turns sick", "upstream", down.upstream, "addr", down.addr)
				down.setSick(true)
			}
			i++
			recover = time.After(demoOutage)
		case <-recover:
			d.log.Info("demo: instance recovers", "upstream", down.upstream, "addr", down.addr)
			down.setSick(false)
			if err := down.start(); err != nil {
				d.log.Error("demo: restart", "addr", down.addr, "err", err)
			}
			down, recover = nil, nil
		}
	}
}

func (in *demoInstance) setSick(sick bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.sick = sick
	if in.grpcH != nil {
		st := healthpb.HealthCheckResponse_SERVING
		if sick {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		in.grpcH.SetServingStatus("", st)
	}
}

func (in *demoInstance) isSick() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.sick
}

// start serves the instance unless it is already running.
func (in *demoInstance) start() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.stop != nil {
		return nil
	}
	l, err := net.Listen("tcp", in.addr)
	if err != nil {
		return err
	}
	switch in.kind {
	case hc.KindHTTP, hc.KindHTTPS:
		srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if in.isSick() {
				http.Error(w, "demo: sick", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "ok from %s\n", in.addr)
		})}
		go srv.Serve(l)
		in.stop = func() { srv.Close() }
	case hc.KindGRPC:
		srv := grpc.NewServer()
		in.grpcH = health.NewServer()
		healthpb.RegisterHealthServer(srv, in.grpcH)
		go srv.Serve(l)
		in.stop = func() { srv.Stop() }
	default:
		in.stop = serveTCP(l)
	}
	return nil
}

// crash stops the instance as a dying process would: listener and connections closed.
func (in *demoInstance) crash() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.stop != nil {
		in.stop()
		in.stop, in.grpcH = nil, nil
	}
}

// serveTCP accepts connections and holds them open until the peer leaves or stop is called.
func serveTCP(l net.Listener) (stop func()) {
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					continue
				}
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				io.Copy(io.Discard, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	return func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}
