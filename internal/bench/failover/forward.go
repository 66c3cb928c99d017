package failover

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// VigilForward is vigil's L4 forwarder: one listener per upstream (forward: {listen: ...}). An
// HTTP client opens a new TCP connection to the listener for each request; a gRPC client keeps
// four kept connections to it, each replaced after a second (see forwardGRPCClient). The instance is learnt from the answer: GET /id's body, or the
// gRPC header "instance".
type VigilForward struct {
	v   *vigilProc
	env *Env
}

func (p *VigilForward) Name() string        { return "vigil-forward-" + p.v.set.Name }
func (p *VigilForward) Carries(k Kind) bool { return true }
func (p *VigilForward) Start(ctx context.Context, env *Env) error {
	p.env = env
	if err := p.v.start(ctx, env); err != nil {
		return err
	}
	// Every instance answers through the forwarder (power of two choices reaches all of them).
	deadline := time.Now().Add(30 * time.Second)
	for k := range numKinds {
		c, err := p.Client(k)
		if err != nil {
			return err
		}
		var seen uint8
		for seen != 7 {
			off, _, _ := c.Do(ctx)
			seen |= off
			if time.Now().After(deadline) {
				return fmt.Errorf("failover: forwarder of %s reached instances %03b only within 30s", k, seen)
			}
		}
		if cl, ok := c.(io.Closer); ok {
			cl.Close()
		}
	}
	return nil
}

func (p *VigilForward) Client(k Kind) (Client, error) {
	addr := p.v.forward[k]
	if k == GRPC {
		return &forwardGRPCClient{env: p.env, addr: addr, conns: map[string]int{}}, nil
	}
	tr := &http.Transport{DisableKeepAlives: true, DisableCompression: true}
	return &forwardHTTPClient{env: p.env, kind: k, hc: &http.Client{Timeout: requestTimeout, Transport: tr}, url: "http://" + addr + "/id"}, nil
}

func (p *VigilForward) Close() error { return p.v.close() }

// Unattributed: a request through the forwarder that gets no answer cannot tell which instance
// it went to; the report counts it against the instance that was killed or hung.
func (p *VigilForward) Unattributed() bool { return true }

// forwardYAML is the upstream YAML of a forwarder listener on addr.
func forwardYAML(addr string) string { return fmt.Sprintf("    forward: {listen: %q}\n", addr) }

// forwardHTTPClient sends GET /id on a new connection to the forwarder each time.
type forwardHTTPClient struct {
	env  *Env
	kind Kind
	hc   *http.Client
	url  string
	errs atomic.Int32 // errors logged so far (the first few are)
}

// logErr logs the first few errors of the client, for a look at why requests failed.
func (c *forwardHTTPClient) logErr(err error) error {
	if c.errs.Add(1) <= 5 && c.env.Logf != nil {
		c.env.Logf("forward %s: %v", c.kind, err)
	}
	return err
}

func (c *forwardHTTPClient) Do(ctx context.Context) (uint8, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return 0, -1, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, -1, c.logErr(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, -1, c.logErr(err)
	}
	i := c.instance(string(body))
	if resp.StatusCode != http.StatusOK || i < 0 {
		return 0, -1, c.logErr(fmt.Errorf("http: %d %q through the forwarder", resp.StatusCode, body))
	}
	return 1 << i, i, nil
}

func (c *forwardHTTPClient) instance(id string) int {
	for _, in := range c.env.Instances[c.kind] {
		if in.ID == id {
			return in.Index
		}
	}
	return -1
}

// forwardGRPCClient sends gRPC health checks over kept connections to the forwarder: four
// ClientConns used in turn, each replaced after connAge (as a server's MAX_CONNECTION_AGE would
// do; an L4 forwarder balances connections, not calls, so a kept connection never moves to a
// revived instance by itself). A call that fails on a TCP connection that an earlier call learnt
// the instance of went to that instance (the forwarder keeps a connection on one instance);
// connections are told apart by the client's local address.
type forwardGRPCClient struct {
	env   *Env
	addr  string
	mu    sync.Mutex
	next  int
	slots [4]grpcSlot
	conns map[string]int // local address -> instance
}

type grpcSlot struct {
	cc   *grpc.ClientConn
	born time.Time
}

// connAge is how long the forwarder client keeps one connection.
const connAge = time.Second

func (c *forwardGRPCClient) conn() (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sl := &c.slots[c.next]
	c.next = (c.next + 1) % len(c.slots)
	if sl.cc == nil || time.Since(sl.born) > connAge {
		cc, err := grpc.NewClient("passthrough:///"+c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("failover: forward client: %w", err)
		}
		if old := sl.cc; old != nil {
			time.AfterFunc(requestTimeout+100*time.Millisecond, func() { old.Close() }) // its calls end first
		}
		sl.cc, sl.born = cc, time.Now()
	}
	return sl.cc, nil
}

func (c *forwardGRPCClient) Do(ctx context.Context) (uint8, int, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var p peer.Peer
	var md metadata.MD
	cc, err := c.conn()
	if err != nil {
		return 0, -1, err
	}
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.Header(&md))
	local := ""
	if p.LocalAddr != nil {
		local = p.LocalAddr.String()
	}
	i := -1
	if ids := md.Get("instance"); len(ids) > 0 {
		for _, in := range c.env.Instances[GRPC] {
			if in.ID == ids[0] {
				i = in.Index
			}
		}
	}
	c.mu.Lock()
	if i >= 0 && local != "" {
		c.conns[local] = i
	} else if j, ok := c.conns[local]; ok && local != "" {
		i = j
	}
	c.mu.Unlock()
	if i < 0 {
		return 0, -1, err
	}
	return 1 << i, i, err
}

func (c *forwardGRPCClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.slots {
		if c.slots[i].cc != nil {
			c.slots[i].cc.Close()
		}
	}
	return nil
}

// forwardListeners picks a forwarder address per kind on 127.0.0.1.
func forwardListeners() ([numKinds]string, error) {
	var addrs [numKinds]string
	for k := range numKinds {
		port, err := freePort("127.0.0.1")
		if err != nil {
			return addrs, err
		}
		addrs[k] = net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	}
	return addrs, nil
}
