package failover

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/miekg/dns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

// Path is one way for a client to reach the instances of an upstream: vigil's DNS, vigil's xDS,
// Consul's DNS, vigil's forwarder. The harness starts it, asks it for one client per backend kind it
// carries, and kills instances under it.
type Path interface {
	// Name is the path's name in reports and file names, e.g. "vigil-dns-default".
	Name() string
	// Carries reports whether clients of this path can reach instances of kind k.
	Carries(k Kind) bool
	// Start brings the path up for env's instances, which are running; it returns once every
	// instance is offered.
	Start(ctx context.Context, env *Env) error
	// Client returns a client for the instances of kind k.
	Client(k Kind) (Client, error)
	// Close ends whatever Start started.
	Close() error
}

// Client sends requests to the instances of one kind through a path.
type Client interface {
	// Do sends one request. offered has bit i set when the path offered instance i for this
	// request (a DNS answer that holds it; for a path that picks by itself, only the one it sent
	// to); sent is the index of the instance the request went to, -1 if unknown.
	Do(ctx context.Context) (offered uint8, sent int, err error)
}

// Env is what paths are started with.
type Env struct {
	Instances [numKinds][]*Instance
	Dir       string // a scratch directory
	Consul    string // path of the consul binary
	Vigil     string // path of the vigil binary
	Logf      func(format string, args ...any)
}

// index returns the index of the kind's instance with ip (or ip:port), -1 if none.
func (e *Env) index(k Kind, addr string) int {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	for _, in := range e.Instances[k] {
		if in.IP == host {
			return in.Index
		}
	}
	return -1
}

// requestTimeout bounds one request of a client: a request to a hung instance fails after it.
const requestTimeout = time.Second

// dnsClient resolves NAME.service.consul at a DNS server before each request, honouring the
// answer's TTL, and sends the request to one of the answer's addresses at random.
type dnsClient struct {
	env    *Env
	kind   Kind
	server string
	name   string
	send   func(ctx context.Context, in *Instance) error

	mu      sync.Mutex
	cached  []int
	expires time.Time
}

func newDNSClient(env *Env, k Kind, server string) *dnsClient {
	c := &dnsClient{env: env, kind: k, server: server, name: dns.Fqdn(k.Upstream() + ".service.consul")}
	c.send = newSender(k)
	return c
}

func (c *dnsClient) resolve(ctx context.Context) ([]int, error) {
	c.mu.Lock()
	if time.Now().Before(c.expires) {
		defer c.mu.Unlock()
		return c.cached, nil
	}
	c.mu.Unlock()
	m := new(dns.Msg)
	m.SetQuestion(c.name, dns.TypeA)
	cl := dns.Client{Timeout: requestTimeout}
	r, _, err := cl.ExchangeContext(ctx, m, c.server)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	var got []int
	ttl := uint32(1 << 31)
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			if i := c.env.index(c.kind, a.A.String()); i >= 0 {
				got = append(got, i)
			}
			ttl = min(ttl, a.Hdr.Ttl)
		}
	}
	if len(got) > 0 && ttl > 0 {
		c.mu.Lock()
		c.cached, c.expires = got, time.Now().Add(time.Duration(ttl)*time.Second)
		c.mu.Unlock()
	}
	return got, nil
}

func (c *dnsClient) Do(ctx context.Context) (uint8, int, error) {
	got, err := c.resolve(ctx)
	if err != nil {
		return 0, -1, err
	}
	if len(got) == 0 {
		return 0, -1, fmt.Errorf("dns: no address for %s", c.name)
	}
	var offered uint8
	for _, i := range got {
		offered |= 1 << i
	}
	i := got[rand.N(len(got))]
	return offered, i, c.send(ctx, c.env.Instances[c.kind][i])
}

// newSender returns how a client sends one request to an instance of kind k: GET /id over a
// keep-alive HTTP client, or a gRPC health check over one connection per instance.
func newSender(k Kind) func(ctx context.Context, in *Instance) error {
	if k == GRPC {
		var mu sync.Mutex
		conns := map[string]*grpc.ClientConn{}
		return func(ctx context.Context, in *Instance) error {
			mu.Lock()
			cc := conns[in.Addr()]
			if cc == nil {
				var err error
				if cc, err = grpc.NewClient("passthrough:///"+in.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
					mu.Unlock()
					return err
				}
				conns[in.Addr()] = cc
			}
			mu.Unlock()
			ctx, cancel := context.WithTimeout(ctx, requestTimeout)
			defer cancel()
			_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}
	}
	hc := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}}
	return func(ctx context.Context, in *Instance) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+in.Addr()+"/id", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || string(body) != in.ID {
			return fmt.Errorf("http: %d %q from %s", resp.StatusCode, body, in.ID)
		}
		return nil
	}
}

// grpcPathClient sends gRPC health checks over one ClientConn whose own balancer picks the
// instance (an xds:/// target); the instance is learnt from the peer address.
type grpcPathClient struct {
	env *Env
	cc  *grpc.ClientConn
}

func (c *grpcPathClient) Do(ctx context.Context) (uint8, int, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var p peer.Peer
	_, err := healthpb.NewHealthClient(c.cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
	i := -1
	if p.Addr != nil {
		i = c.env.index(GRPC, p.Addr.String())
	}
	if i < 0 {
		return 0, -1, err
	}
	return 1 << i, i, err
}

// freePort returns a port that was free on host a moment ago (for peers that take port numbers).
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	u, err := net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return 0, err
	}
	u.Close()
	return port, nil
}
