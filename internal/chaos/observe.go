package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	mdns "github.com/miekg/dns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	grpcxds "google.golang.org/grpc/xds"
)

// every runs f each period until ctx ends.
func every(ctx context.Context, period time.Duration, f func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// observeDNS resolves each upstream's name at vigil in turn, as any DNS client would.
func observeDNS(ctx context.Context, m *model, server string, period time.Duration) {
	c := &mdns.Client{Net: "udp", Timeout: 2 * time.Second}
	k := Kind(0)
	every(ctx, period, func() {
		k = (k + 1) % numKinds
		q := new(mdns.Msg)
		q.SetQuestion(k.Upstream()+".service.consul.", mdns.TypeA)
		sent := time.Now()
		r, _, err := c.ExchangeContext(ctx, q, server)
		if ctx.Err() != nil {
			return
		}
		m.count("DNS answered while vigil is up")
		if err != nil {
			m.serve("dns", false)
			if m.upAcross(sent, 0) {
				m.violate("DNS unanswered", "%s: %v", q.Question[0].Name, err)
			}
			return
		}
		if r.Rcode == mdns.RcodeServerFailure {
			// Until its first probe round is done vigil answers SERVFAIL for a service with
			// nothing served yet (a client must not cache a negative answer); not after.
			m.serve("dns", false)
			if m.upAcross(sent, m.grace) {
				m.violate("DNS SERVFAIL", "%s, vigil up for more than %s", q.Question[0].Name, m.grace)
			}
			return
		}
		m.serve("dns", true)
		served := map[string]bool{}
		for _, rr := range r.Answer {
			if a, ok := rr.(*mdns.A); ok {
				served[a.A.String()] = true
			}
		}
		m.checkServed("dns", k, served, nil, sent)
	})
}

func rcode(r *mdns.Msg) string {
	if r == nil {
		return "none"
	}
	return mdns.RcodeToString[r.Rcode]
}

// adminUpstreams is the part of GET /v1/upstreams the checks read.
type adminUpstreams struct {
	Upstreams []struct {
		Name      string `json:"name"`
		Instances []struct {
			Address string `json:"address"`
			Served  bool   `json:"served"`
			State   string `json:"state"`
			Reason  string `json:"reason"`
			Health  string `json:"health"`
		} `json:"instances"`
	} `json:"upstreams"`
}

// observeAdmin reads the table from the admin API.
func observeAdmin(ctx context.Context, m *model, addr string, period time.Duration) {
	hc := &http.Client{Timeout: 2 * time.Second}
	every(ctx, period, func() {
		sent := time.Now()
		var t adminUpstreams
		err := getJSON(ctx, hc, "http://"+addr+"/v1/upstreams", &t)
		if ctx.Err() != nil {
			return
		}
		m.count("admin answered while vigil is up")
		if err != nil {
			m.serve("admin", false)
			if m.upAcross(sent, 0) {
				m.violate("admin unanswered", "%v", err)
			}
			return
		}
		m.serve("admin", true)
		for _, u := range t.Upstreams {
			for k := range numKinds {
				if u.Name != k.Upstream() {
					continue
				}
				served, why := map[string]bool{}, map[string]string{}
				for _, in := range u.Instances {
					if in.Served {
						served[in.Address] = true
					} else {
						why[in.Address] = fmt.Sprintf("(state %s, reason %q, consul %s)", in.State, in.Reason, in.Health)
					}
				}
				m.checkServed("admin", k, served, why, sent)
			}
		}
	})
}

func getJSON(ctx context.Context, hc *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// observeEDS holds an ADS stream to vigil for the three clusters' endpoints, as Envoy would, and
// checks what each push says is HEALTHY; a broken stream is opened again.
func observeEDS(ctx context.Context, m *model, addr string) {
	for ctx.Err() == nil {
		err := edsStream(ctx, m, addr)
		if ctx.Err() != nil {
			return
		}
		m.serve("xds stream", false)
		_ = err
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func edsStream(ctx context.Context, m *model, addr string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	node := &corev3.Node{Id: "chaos-eds"}
	names := []string{KeepAlive.Upstream(), Closing.Upstream(), GRPC.Upstream()}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: names}); err != nil {
		return err
	}
	// The latest push per cluster, checked on every tick (the view a client holds meanwhile).
	type view struct {
		healthy map[string]bool
		at      time.Time
	}
	views := make(chan map[Kind]view, 1)
	go func() {
		var last map[Kind]view
		every(ctx, 50*time.Millisecond, func() {
			select {
			case v := <-views:
				last = v
			default:
			}
			now := time.Now()
			for k, v := range last {
				// Judged as an answer sent now: the view is what the client routes by now.
				m.checkServed("xds", k, v.healthy, nil, now)
			}
		})
	}()
	cur := map[Kind]view{}
	for {
		r, err := st.Recv()
		if err != nil {
			return err
		}
		m.serve("xds push", true)
		for _, a := range r.Resources {
			var cla endpointv3.ClusterLoadAssignment
			if err := a.UnmarshalTo(&cla); err != nil {
				return err
			}
			healthy := map[string]bool{}
			for _, le := range cla.Endpoints {
				for _, e := range le.LbEndpoints {
					if e.HealthStatus == corev3.HealthStatus_HEALTHY || e.HealthStatus == corev3.HealthStatus_UNKNOWN {
						healthy[e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()] = true
					}
				}
			}
			for k := range numKinds {
				if cla.ClusterName == k.Upstream() {
					cur[k] = view{healthy: healthy, at: time.Now()}
				}
			}
		}
		snap := make(map[Kind]view, len(cur))
		for k, v := range cur {
			snap[k] = v
		}
		select {
		case <-views:
		default:
		}
		views <- snap
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: names,
			VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
			return err
		}
	}
}

// observeGRPC calls the grpc upstream through gRPC's own xDS client (resolver and balancer fed by
// vigil), as a proxyless gRPC service would, and counts calls served and failed.
func observeGRPC(ctx context.Context, m *model, xdsAddr string, period time.Duration) error {
	bootstrap := fmt.Sprintf(`{"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "chaos-grpc"}}`, xdsAddr)
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		return fmt.Errorf("chaos: xds resolver: %w", err)
	}
	cc, err := grpc.NewClient("xds:///"+GRPC.Upstream(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		return fmt.Errorf("chaos: xds client: %w", err)
	}
	go func() {
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		every(ctx, period, func() {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			var p peer.Peer
			_, err := hc.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
			if ctx.Err() != nil {
				return
			}
			m.serve("grpc via xds", err == nil)
			if err == nil && p.Addr != nil {
				if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
					m.checkAnswered("grpc via xds", host)
				}
			}
		})
	}()
	return nil
}

// checkAnswered counts a call answered by the instance at ip; the answer itself proves it alive.
func (m *model) checkAnswered(client, ip string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.byIP[ip]; !ok {
		m.nviolation["answer from an unknown address"]++
		m.note("answer from an unknown address", "%s: %s", client, ip)
	}
}

// localRegistration returns the status of vigil's own service's checks in the Consul catalog,
// asked of the client agent ("" when absent).
func localRegistration(ctx context.Context, hc *http.Client) (string, error) {
	var checks []struct {
		Status    string `json:"Status"`
		ServiceID string `json:"ServiceID"`
	}
	url := "http://" + net.JoinHostPort(clientIP, strconv.Itoa(consulHTTP)) + "/v1/health/checks/chaos-app"
	if err := getJSON(ctx, hc, url, &checks); err != nil {
		return "", err
	}
	if len(checks) == 0 {
		return "", errors.New("chaos-app not registered")
	}
	return checks[0].Status, nil
}

// observeForward sends one HTTP/1.0 request per new connection through vigil's forwarder to each
// HTTP upstream in turn; the answer names the instance.
func observeForward(ctx context.Context, m *model, v *vigilProc, period time.Duration) {
	k := Kind(0)
	every(ctx, period, func() {
		k = (k + 1) % GRPC // keepalive and closing: the HTTP upstreams
		sent := time.Now()
		id, err := forwardGet(ctx, v.forward(k))
		if ctx.Err() != nil {
			return
		}
		m.serve("forwarder", err == nil)
		m.checkForward(k, sent, err)
		if err == nil {
			m.checkAnsweredID("forwarder", k, id)
		}
	})
}

func forwardGet(ctx context.Context, addr string) (string, error) {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "GET /id HTTP/1.0\r\nHost: chaos\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", addr, resp.Status)
	}
	return string(body), nil
}
