package dns

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/internal/field"
)

// Config configures the DNS frontend (the `dns:` section of the configuration file).
type Config struct {
	// Listen is the UDP and TCP address (default 127.0.0.1:8600; "" disables the DNS frontend).
	Listen string `yaml:"listen"`
	// Domain is the domain vigil answers for (default "consul.").
	Domain string `yaml:"domain"`
	// AltDomain is a second domain answered the same way (default: none).
	AltDomain string `yaml:"alt_domain"`
	// NegativeTTL is the SOA minimum and TTL of negative answers (default 5s).
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	// AnswerLimit caps the records of one answer; 0 means only the message size limits it (default 0).
	AnswerLimit int `yaml:"answer_limit"`
	// Recursors answer names outside the domains, tried in order (default: none, such names are REFUSED).
	Recursors []string `yaml:"recursors"`
	// RecursorTimeout bounds one exchange with one recursor (default 2s).
	RecursorTimeout time.Duration `yaml:"recursor_timeout"`
	// AllowRecursion lists the client networks that may use the recursors (default loopback
	// only). Clients outside them get UDP answers of at most UntrustedUDPSize bytes and are
	// rate limited (RateLimit).
	AllowRecursion []string `yaml:"allow_recursion"`
	// UntrustedUDPSize is the largest UDP answer to a client outside allow_recursion, whatever
	// its EDNS0 buffer; more is truncated and the client retries over TCP (default 512).
	UntrustedUDPSize int `yaml:"untrusted_udp_size"`
	// RateLimit limits UDP responses to clients outside allow_recursion, per client network.
	RateLimit RateLimit `yaml:"rate_limit"`

	// Datacenter is the local datacenter, from node.datacenter (not read from the dns section).
	Datacenter string `yaml:"-"`
	// TTL is the answer TTL of upstreams without their own, from defaults.dns.ttl.
	TTL time.Duration `yaml:"-"`
	// TTLs are per-upstream answer TTLs, from upstreams[].dns.ttl.
	TTLs map[string]time.Duration `yaml:"-"`
}

// UpstreamConfig is the per-upstream `dns:` block, inherited from defaults.dns.
type UpstreamConfig struct {
	// TTL of the upstream's A, AAAA and SRV records (default 5s).
	TTL time.Duration `yaml:"ttl"`
}

// DefaultConfig returns the built-in DNS configuration.
func DefaultConfig() Config {
	return Config{
		Listen:           "127.0.0.1:8600",
		Domain:           "consul.",
		NegativeTTL:      5 * time.Second,
		RecursorTimeout:  2 * time.Second,
		AllowRecursion:   []string{"127.0.0.0/8", "::1/128"},
		UntrustedUDPSize: mdns.MinMsgSize,
		RateLimit:        DefaultRateLimit(),
		Datacenter:       "dc1",
		TTL:              5 * time.Second,
	}
}

// DefaultUpstream returns the built-in per-upstream DNS configuration.
func DefaultUpstream() UpstreamConfig { return UpstreamConfig{TTL: 5 * time.Second} }

// Validate checks an upstream's dns block.
func (u *UpstreamConfig) Validate() error {
	var errs field.Errors
	if u.TTL < 0 || u.TTL > 24*time.Hour {
		errs.Addf("ttl", "must be between 0s and 24h, got %s", u.TTL)
	}
	return errs.Err()
}

// Validate checks c; errors name the field.
func (c *Config) Validate() error {
	var errs field.Errors
	if c.Listen != "" {
		if err := field.HostPort(c.Listen, true); err != nil {
			errs.Addf("listen", "%v", err)
		}
	}
	if err := checkDomain(c.Domain); err != nil {
		errs.Addf("domain", "%v", err)
	}
	if c.AltDomain != "" {
		if err := checkDomain(c.AltDomain); err != nil {
			errs.Addf("alt_domain", "%v", err)
		} else if strings.EqualFold(mdns.Fqdn(c.AltDomain), mdns.Fqdn(c.Domain)) {
			errs.Addf("alt_domain", "must differ from domain")
		}
	}
	if c.NegativeTTL < 0 || c.NegativeTTL > 24*time.Hour {
		errs.Addf("negative_ttl", "must be between 0s and 24h, got %s", c.NegativeTTL)
	}
	if c.AnswerLimit < 0 {
		errs.Addf("answer_limit", "must be >= 0 (0: no limit), got %d", c.AnswerLimit)
	}
	for i, r := range c.Recursors {
		if err := field.HostPort(r, false); err != nil {
			errs.Addf(fmt.Sprintf("recursors[%d]", i), "%v", err)
		} else if c.Listen != "" && pointsAt(r, c.Listen) {
			errs.Addf(fmt.Sprintf("recursors[%d]", i), "%s is vigil's own dns.listen: each query would come back until recursor_timeout", r)
		}
	}
	if c.RecursorTimeout <= 0 {
		errs.Addf("recursor_timeout", "must be > 0, got %s", c.RecursorTimeout)
	}
	for i, p := range c.AllowRecursion {
		if _, err := netip.ParsePrefix(p); err != nil {
			errs.Addf(fmt.Sprintf("allow_recursion[%d]", i), "%q is not a network such as 127.0.0.0/8", p)
		}
	}
	if c.UntrustedUDPSize < mdns.MinMsgSize || c.UntrustedUDPSize > maxUDP {
		errs.Addf("untrusted_udp_size", "must be between 512 and 4096, got %d", c.UntrustedUDPSize)
	}
	errs.Add("rate_limit", c.RateLimit.Validate())
	if c.TTL < 0 {
		errs.Addf("ttl", "must be >= 0")
	}
	return errs.Err()
}

// pointsAt reports whether a query sent to recursor would reach a server listening on listen
// (both valid host:port): the same address and port, or the same port on a wildcard listen
// address and a local recursor address.
func pointsAt(recursor, listen string) bool {
	r, err1 := netip.ParseAddrPort(recursor)
	l, err2 := netip.ParseAddrPort(listen)
	if err1 != nil || err2 != nil || r.Port() != l.Port() || l.Port() == 0 {
		return false
	}
	ra, la := r.Addr().Unmap(), l.Addr().Unmap()
	switch {
	case ra == la:
		return true
	case ra.IsUnspecified(): // dialling 0.0.0.0 or :: reaches the local host
		return la.IsLoopback() || la.IsUnspecified()
	case la.IsUnspecified():
		if ra.IsLoopback() {
			return true
		}
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == ra {
				return true
			}
		}
	}
	return false
}

func checkDomain(d string) error {
	if d == "" || d == "." {
		return fmt.Errorf("must be set, e.g. consul.")
	}
	if _, ok := mdns.IsDomainName(d); !ok {
		return fmt.Errorf("%q is not a domain name", d)
	}
	if strings.ContainsAny(d, `\ `) {
		return fmt.Errorf("%q must be plain labels", d)
	}
	return nil
}

// ttls are the answer TTLs in force; replaced whole by SetTTLs.
type ttls struct {
	def time.Duration
	per map[string]time.Duration
}

// of returns the TTL of upstream name in seconds.
func (t *ttls) of(name string) uint32 {
	d, ok := t.per[name]
	if !ok {
		d = t.def
	}
	return uint32(d / time.Second)
}
