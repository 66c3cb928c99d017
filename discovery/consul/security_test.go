package consul_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client certificate into dir.
func pki(t *testing.T, dir string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vigil test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) (string, string) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost", "server.dc1.consul"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kb)
	}
	ca = write("ca.pem", "CERTIFICATE", caDER)
	serverCert, serverKey = leaf(2, "server", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey = leaf(3, "client", x509.ExtKeyUsageClientAuth)
	return
}

// TestTLSAndACL: vigil watches a Consul that serves HTTPS only, verifies client certificates and
// denies anonymous reads; it gets there with the CA, its client certificate and the ACL token from
// a token file, and never logs the token.
func TestTLSAndACL(t *testing.T) {
	dir := t.TempDir()
	ca, scert, skey, ccert, ckey := pki(t, dir)
	const token = "9f1c3b8e-1d2a-4c5b-8e7f-0a1b2c3d4e5f"
	a := newAgent(t, agentOpts{})
	httpsPort := a.spare
	a.extra = []string{"-hcl", fmt.Sprintf(`ports { https = %d }
tls { defaults { ca_file = %q cert_file = %q key_file = %q verify_incoming = true } }
acl { enabled = true default_policy = "deny" tokens { initial_management = %q agent = %q } }`,
		httpsPort, ca, scert, skey, token, token)}
	a.spawn()
	mgmt, err := api.NewClient(&api.Config{Address: a.addr(), Token: token})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() bool {
		l, err := mgmt.Status().Leader()
		if err != nil || l == "" {
			return false
		}
		// ACLs bootstrap after the leader: wait until the management token works.
		return mgmt.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "api-1", Name: "api", Address: "127.0.0.1", Port: 9001}) == nil
	}, "consul with ACLs up")

	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	watch := func(cfg consul.Config) (*syncBuffer, <-chan []discovery.Group) {
		var logs syncBuffer
		log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		client := must[*consulClient](t)(consul.NewClient(cfg, nil))
		d := must[*consul.Discovery](t)(consul.NewDiscovery(consul.Options{Config: cfg, Upstreams: map[string]consul.Upstream{"api": {}},
			Client: client, Logger: log.With("cfg", cfg, "token", cfg.Token)}))
		up := make(chan []discovery.Group, 16)
		run(t, func(ctx context.Context) { d.Run(ctx, up) })
		return &logs, up
	}
	first := func(up <-chan []discovery.Group) []discovery.Group {
		select {
		case gs := <-up:
			return gs
		case <-time.After(wait):
			t.Fatal("no first set")
			return nil
		}
	}
	cfg := a.vigilConfig()
	cfg.Address, cfg.Scheme = "127.0.0.1:"+strconv.Itoa(httpsPort), "https"
	cfg.TLS = consul.TLS{CAFile: ca, CertFile: ccert, KeyFile: ckey}
	cfg.TokenFile = tokenFile
	if err := cfg.ReadToken(); err != nil {
		t.Fatal(err)
	}

	t.Run("tls and token", func(t *testing.T) {
		logs, up := watch(cfg)
		gs := first(up)
		if len(gs) != 1 || len(gs[0].Instances) != 1 || gs[0].Instances[0].Port != 9001 {
			t.Fatalf("first set %+v, want api-1", gs)
		}
		if strings.Contains(logs.String(), token) {
			t.Errorf("the token is in the log:\n%s", logs.String())
		}
	})
	t.Run("no token: nothing readable", func(t *testing.T) {
		c := cfg
		c.Token = ""
		_, up := watch(c)
		if gs := first(up); len(gs) != 1 || len(gs[0].Instances) != 0 {
			t.Fatalf("first set %+v, want no instance (denied)", gs)
		}
	})
	t.Run("no client certificate: refused, logged without the token", func(t *testing.T) {
		c := cfg
		c.TLS.CertFile, c.TLS.KeyFile = "", ""
		logs, up := watch(c)
		if gs := first(up); len(gs) != 1 || !gs[0].Keep {
			t.Fatalf("first set %+v, want the source kept (unreachable)", gs)
		}
		testutil.Eventually(t, wait, 10*time.Millisecond, func() bool { return strings.Contains(logs.String(), "watch failing") },
			"the failure logged")
		if strings.Contains(logs.String(), token) {
			t.Errorf("the token is in the log:\n%s", logs.String())
		}
	})
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
