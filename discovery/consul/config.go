// Package consul watches upstream membership in Consul and keeps the local service registered there.
package consul

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-sidecar/vigil/internal/field"
	"github.com/vigil-sidecar/vigil/internal/secret"
)

// Secret is a string that never prints its value (the ACL token).
type Secret = secret.Secret

// TLS configures TLS to the Consul agent.
type TLS struct {
	// CAFile is a PEM bundle of roots that verify the agent (default: the system roots).
	CAFile string `yaml:"ca_file" json:"ca_file,omitempty"`
	// CertFile and KeyFile are a client certificate and its key, for agents that verify clients (default: none).
	CertFile string `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file" json:"key_file,omitempty"`
	// ServerName is the name verified in the agent's certificate (default: the address's host).
	ServerName string `yaml:"server_name" json:"server_name,omitempty"`
	// InsecureSkipVerify skips verification of the agent's certificate (default false).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify" json:"insecure_skip_verify,omitempty"`
}

// Catalog configures the discovery of upstreams by a filter over Consul's catalog.
type Catalog struct {
	// Filter is a Consul filter expression over the catalog's services, e.g.
	// `ServiceTags contains "public"` (default "": no catalog discovery).
	Filter string `yaml:"filter" json:"filter,omitempty"`
	// Tag, if set, selects only instances that carry it in every discovered upstream (default: none).
	Tag string `yaml:"tag" json:"tag,omitempty"`
}

// Config is the connection to Consul and how it is watched.
type Config struct {
	// Enabled turns Consul discovery and registration on (default false).
	Enabled bool `yaml:"enabled" json:"enabled"`
	// Address of the local Consul agent's HTTP API, host:port (default 127.0.0.1:8500).
	Address string `yaml:"address" json:"address"`
	// Scheme is http or https (default http).
	Scheme string `yaml:"scheme" json:"scheme"`
	// Datacenter is the local datacenter (default "": the agent's own).
	Datacenter string `yaml:"datacenter" json:"datacenter,omitempty"`
	// TokenFile holds the ACL token (default "": the CONSUL_HTTP_TOKEN environment variable, if set).
	TokenFile string `yaml:"token_file" json:"token_file,omitempty"`
	// Token is the ACL token, filled in by ReadToken; it is never printed.
	Token Secret `yaml:"-" json:"token,omitempty"`
	// TLS to the agent, used with scheme https.
	TLS TLS `yaml:"tls" json:"tls"`
	// WaitTime is the longest a blocking query waits for a change (default 60s, at most 10m).
	WaitTime time.Duration `yaml:"wait_time" json:"wait_time"`
	// AllowStale lets any Consul server answer, not only the leader (default true).
	AllowStale bool `yaml:"allow_stale" json:"allow_stale"`
	// MaxStale is how far behind the leader a stale answer may be before the query is repeated
	// against the leader (default 10s; 0: any).
	MaxStale time.Duration `yaml:"max_stale" json:"max_stale"`
	// UseCache asks the agent to answer the watches from its cache (`?cached`): the agent then keeps
	// one blocking query (or, with its streaming backend, one subscription) per service towards the
	// servers, however many sidecars on it watch that service; consistent reads bypass it (default true).
	UseCache bool `yaml:"use_cache" json:"use_cache"`
	// MinInterval is the least time between two queries of one watch, so that a flapping
	// service cannot cause a query storm (default 1s).
	MinInterval time.Duration `yaml:"min_interval" json:"min_interval"`
	// BackoffBase and BackoffMax bound the jittered exponential backoff after errors (default 500ms and 30s).
	BackoffBase time.Duration `yaml:"backoff_base" json:"backoff_base"`
	BackoffMax  time.Duration `yaml:"backoff_max" json:"backoff_max"`
	// WarningIsPassing serves instances whose Consul checks are in warning (default true).
	WarningIsPassing bool `yaml:"warning_is_passing" json:"warning_is_passing"`
	// ZoneMetaKey is the service meta key, then node meta key, that holds an instance's zone (default "zone").
	ZoneMetaKey string `yaml:"zone_meta_key" json:"zone_meta_key"`
	// Catalog discovers upstreams by a filter over the catalog (default: off).
	Catalog Catalog `yaml:"catalog" json:"catalog"`
}

// DefaultConfig returns the built-in defaults (disabled).
func DefaultConfig() Config {
	return Config{
		Address:          "127.0.0.1:8500",
		Scheme:           "http",
		WaitTime:         time.Minute,
		AllowStale:       true,
		MaxStale:         10 * time.Second,
		UseCache:         true,
		MinInterval:      time.Second,
		BackoffBase:      500 * time.Millisecond,
		BackoffMax:       30 * time.Second,
		WarningIsPassing: true,
		ZoneMetaKey:      "zone",
	}
}

// Validate checks c; errors name the field.
func (c *Config) Validate() error {
	var errs field.Errors
	if _, port, err := net.SplitHostPort(c.Address); err != nil {
		errs.Addf("address", "%q is not host:port", c.Address)
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		errs.Addf("address", "%q has no valid port", c.Address)
	}
	if c.Scheme != "http" && c.Scheme != "https" {
		errs.Addf("scheme", "must be http or https, got %q", c.Scheme)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs.Addf("tls", "cert_file and key_file must be set together")
	}
	if c.TLS.CAFile != "" && c.TLS.InsecureSkipVerify {
		errs.Addf("tls.insecure_skip_verify", "cannot be set together with ca_file")
	}
	if c.WaitTime <= 0 || c.WaitTime > 10*time.Minute {
		errs.Addf("wait_time", "must be > 0 and at most 10m, got %s", c.WaitTime)
	}
	if c.MaxStale < 0 {
		errs.Addf("max_stale", "must be >= 0")
	}
	if c.MinInterval < 0 {
		errs.Addf("min_interval", "must be >= 0")
	}
	if c.BackoffBase <= 0 {
		errs.Addf("backoff_base", "must be > 0")
	}
	if c.BackoffMax < c.BackoffBase {
		errs.Addf("backoff_max", "must be at least backoff_base")
	}
	if c.Catalog.Filter != "" && strings.TrimSpace(c.Catalog.Filter) == "" {
		errs.Addf("catalog.filter", "must not be blank")
	}
	return errs.Err()
}

// ReadToken fills in Token from TokenFile or, without one, from the CONSUL_HTTP_TOKEN environment
// variable. cmd/vigil calls it once after parsing; the error never contains the token.
func (c *Config) ReadToken() error {
	if c.TokenFile == "" {
		c.Token = Secret(os.Getenv("CONSUL_HTTP_TOKEN"))
		return nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return fmt.Errorf("consul: token_file: %w", err)
	}
	c.Token = Secret(strings.TrimSpace(string(b)))
	return nil
}

// Upstream is the per-upstream `consul:` block: which Consul service an upstream is.
type Upstream struct {
	// Service is the Consul service name (default: the upstream's name).
	Service string `yaml:"service" json:"service,omitempty"`
	// Tag, if set, selects only instances that carry it (default: none).
	Tag string `yaml:"tag" json:"tag,omitempty"`
	// Datacenter to watch (default: consul.datacenter, or the agent's).
	Datacenter string `yaml:"datacenter" json:"datacenter,omitempty"`
	// FallbackDatacenters are served, in order and at a lower priority, while the datacenter
	// has no healthy instance, like a prepared query's failover (default: none).
	FallbackDatacenters []string `yaml:"fallback_datacenters" json:"fallback_datacenters,omitempty"`
}

var dcRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Validate checks u; errors name the field.
func (u *Upstream) Validate() error {
	var errs field.Errors
	if u.Datacenter != "" && !dcRE.MatchString(u.Datacenter) {
		errs.Addf("datacenter", "%q is not a datacenter name", u.Datacenter)
	}
	seen := map[string]bool{u.Datacenter: u.Datacenter != ""}
	for i, dc := range u.FallbackDatacenters {
		p := fmt.Sprintf("fallback_datacenters[%d]", i)
		switch {
		case !dcRE.MatchString(dc):
			errs.Addf(p, "%q is not a datacenter name", dc)
		case seen[dc]:
			errs.Addf(p, "%q is listed twice", dc)
		}
		seen[dc] = true
	}
	return errs.Err()
}

// Service is the local service that vigil registers in Consul (the `service:` section but
// its check, which cmd/vigil hands to the health checker).
type Service struct {
	// Name of the service in Consul (default "": nothing is registered).
	Name string `yaml:"name" json:"name"`
	// ID of this instance (default: name-address-port).
	ID string `yaml:"id" json:"id,omitempty"`
	// Address the service listens on (default: the agent's address).
	Address string `yaml:"address" json:"address,omitempty"`
	// Port the service listens on (required with name).
	Port int `yaml:"port" json:"port"`
	// Tags and Meta are registered with the service.
	Tags []string          `yaml:"tags" json:"tags,omitempty"`
	Meta map[string]string `yaml:"meta" json:"meta,omitempty"`
	// TTL of the Consul check that vigil keeps updated (default 30s).
	TTL time.Duration `yaml:"ttl" json:"ttl"`
	// Heartbeat is how often the TTL is refreshed even without a change (default: a third of ttl).
	Heartbeat time.Duration `yaml:"heartbeat" json:"heartbeat"`
	// DeregisterCriticalAfter lets Consul remove the service after it has been critical this long,
	// e.g. when vigil died (default 0: never).
	DeregisterCriticalAfter time.Duration `yaml:"deregister_critical_after" json:"deregister_critical_after"`
	// Drain is how long the service stays registered as critical on shutdown before it is
	// deregistered, so that clients stop sending to it (default 10s).
	Drain time.Duration `yaml:"drain" json:"drain"`
}

// DefaultService returns the built-in defaults (nothing registered).
func DefaultService() Service {
	return Service{TTL: 30 * time.Second, Drain: 10 * time.Second}
}

// Validate checks s; errors name the field. A service with no name is not registered and not checked.
func (s *Service) Validate() error {
	if s.Name == "" {
		return nil
	}
	var errs field.Errors
	if s.Port < 1 || s.Port > 65535 {
		errs.Addf("port", "must be between 1 and 65535, got %d", s.Port)
	}
	if s.Address != "" && net.ParseIP(s.Address) == nil && strings.ContainsAny(s.Address, " /:") {
		errs.Addf("address", "%q is not an IP address or host name", s.Address)
	}
	if s.TTL < time.Second {
		errs.Addf("ttl", "must be at least 1s, got %s", s.TTL)
	}
	if s.Heartbeat < 0 || (s.Heartbeat > 0 && s.Heartbeat >= s.TTL) {
		errs.Addf("heartbeat", "must be less than ttl (0: ttl/3), got %s", s.Heartbeat)
	}
	if s.DeregisterCriticalAfter < 0 {
		errs.Addf("deregister_critical_after", "must be >= 0")
	}
	if s.Drain < 0 {
		errs.Addf("drain", "must be >= 0")
	}
	return errs.Err()
}

// InstanceID returns the ID the service is registered under: ID, or one made of name, address and port.
func (s *Service) InstanceID() string {
	if s.ID != "" {
		return s.ID
	}
	addr := s.Address
	if addr == "" {
		addr = "agent"
	}
	return s.Name + "-" + addr + "-" + strconv.Itoa(s.Port)
}

func (s *Service) heartbeat() time.Duration {
	if s.Heartbeat > 0 {
		return s.Heartbeat
	}
	return s.TTL / 3
}
