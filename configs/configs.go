// Package configs holds vigil's configuration: the embedded default, parsing and validation.
package configs

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/discovery/static"
	"github.com/vigil-sidecar/vigil/internal/field"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/forward"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/share"
	"github.com/vigil-sidecar/vigil/proxy/table"
	"github.com/vigil-sidecar/vigil/xds"
)

// Default is the embedded default configuration (configs/vigil.yaml).
//
//go:embed vigil.yaml
var Default []byte

// Config is the whole of vigil's configuration file.
type Config struct {
	// Node describes where this vigil runs.
	Node Node `yaml:"node"`
	// Log configures logging.
	Log Log `yaml:"log"`
	// Admin configures the admin HTTP server.
	Admin admin.Config `yaml:"admin"`
	// Discovery configures membership persistence.
	Discovery Discovery `yaml:"discovery"`
	// Consul configures discovery from Consul and registration in it (default: disabled).
	Consul consul.Config `yaml:"consul"`
	// Service is the local service that vigil registers in Consul (default: none).
	Service Service `yaml:"service"`
	// Defaults apply to every upstream that does not set its own values.
	Defaults Defaults `yaml:"defaults"`
	// DNS configures the DNS frontend.
	DNS dns.Config `yaml:"dns"`
	// Upstreams are the services that the local service calls.
	Upstreams []Upstream `yaml:"upstreams"`
	// XDS configures the xDS control plane for Envoy and proxyless gRPC clients.
	XDS xds.Config `yaml:"xds"`
	// AllowEmpty lets a configuration have no upstreams (default false: one without any is
	// refused, so that an empty or truncated file cannot empty every upstream on a reload).
	AllowEmpty bool `yaml:"allow_empty"`
	// Share shares the active probing of each instance among the vigils of the datacenter
	// (default: off, every vigil probes every instance). See the README, "Shared probing".
	Share share.Config `yaml:"share"`
}

// Node describes the machine vigil runs on.
type Node struct {
	// Name of the node (default: the host name).
	Name string `yaml:"name"`
	// Zone is the local availability zone, for zone preference (default: none).
	Zone string `yaml:"zone"`
	// Datacenter is the local datacenter (default dc1).
	Datacenter string `yaml:"datacenter"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error (default info).
	Level string `yaml:"level"`
	// Format is text or json (default text).
	Format string `yaml:"format"`
}

// Discovery configures the membership manager.
type Discovery struct {
	// StateFile persists the last-known membership (default: none, not persisted).
	StateFile string `yaml:"state_file"`
	// MaxStateAge is the oldest persisted membership used at start (default 24h).
	MaxStateAge time.Duration `yaml:"max_state_age"`
}

// Defaults are inherited by every upstream.
type Defaults struct {
	// Check is the default health check.
	Check health.CheckConfig `yaml:"check"`
	// Policy is the default serving policy (panic threshold, zone preference).
	table.Policy `yaml:",inline"`
	// DNS is the default per-upstream DNS settings (answer TTL).
	DNS dns.UpstreamConfig `yaml:"dns"`
}

// Upstream is one service the local service calls.
type Upstream struct {
	// Name of the service: lowercase letters, digits and '-' (required, unique).
	Name string `yaml:"name"`
	// Instances are its static instances (required unless consul is set).
	Instances []static.Instance `yaml:"instances"`
	// Consul, if set, discovers its instances in Consul (default: not from Consul).
	Consul *consul.Upstream `yaml:"consul"`
	// Check overrides fields of defaults.check.
	Check health.CheckConfig `yaml:"check"`
	// Policy overrides the default serving policy.
	table.Policy `yaml:",inline"`
	// XDS is how the upstream is served over xDS (listener port, protocol, timeouts).
	XDS xds.UpstreamConfig `yaml:"xds"`
	// DNS overrides fields of defaults.dns.
	DNS dns.UpstreamConfig `yaml:"dns"`
	// Forward, if set, gives the upstream a local TCP listener of vigil's own L4 forwarder
	// (default: none).
	Forward *forward.Config `yaml:"forward"`
	// Share, when false, keeps the upstream out of shared probing: this vigil probes each of
	// its instances itself (default true; only with share.enabled).
	Share *bool `yaml:"share"`
}

// Builtin returns the built-in defaults that a configuration file overrides.
func Builtin() Config {
	return Config{
		Node:      Node{Datacenter: "dc1"},
		Log:       Log{Level: "info", Format: "text"},
		Admin:     admin.Config{Listen: "127.0.0.1:9480"},
		Discovery: Discovery{MaxStateAge: 24 * time.Hour},
		Consul:    consul.DefaultConfig(),
		Service:   DefaultService(),
		Defaults:  Defaults{Check: health.DefaultCheck(), Policy: table.DefaultPolicy(), DNS: dns.DefaultUpstream()},
		XDS:       xds.DefaultConfig(),
		DNS:       dns.DefaultConfig(),
		Share:     share.DefaultConfig(),
	}
}

// Parse decodes a configuration strictly (an unknown key is an error with its line),
// applies defaults and inheritance, and validates it. Every problem found is reported.
// It reads no file that the configuration names: Load also checks those.
func Parse(data []byte) (*Config, error) { return parse(data, false) }

func parse(data []byte, files bool) (*Config, error) {
	// Pass 1, strict: unknown keys and wrong types, with line numbers.
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var strict Config
	var decodeErr error
	if err := dec.Decode(&strict); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, err // a syntax error: nothing more to say
		}
		decodeErr = yamlError(err)
	}
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		// A second document would be silently ignored: refuse it (or report its syntax error).
		if err == nil {
			err = fmt.Errorf("line %d: a second YAML document: vigil reads exactly one", next.Line)
		}
		decodeErr = errors.Join(decodeErr, yamlError(err))
	}
	// Pass 2: onto the built-in defaults. Type errors were reported by pass 1; the fields
	// that decode still get validated, so that one run lists every problem.
	cfg := Builtin()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	dropDuplicateKeys(&doc) // reported by pass 1
	if doc.Kind != 0 {
		doc.Decode(&cfg)
	}
	// Pass 3: each upstream starts from the defaults, then its own fields.
	if seq := mappingValue(&doc, "upstreams"); seq != nil && seq.Kind == yaml.SequenceNode {
		cfg.Upstreams = make([]Upstream, len(seq.Content))
		for i, n := range seq.Content {
			u := Upstream{Check: cloneCheck(cfg.Defaults.Check), Policy: cfg.Defaults.Policy, DNS: cfg.Defaults.DNS}
			n.Decode(&u)
			if u.Forward != nil {
				*u.Forward = u.Forward.WithDefaults()
			}
			cfg.Upstreams[i] = u
		}
	}
	var filesErr error
	if files {
		filesErr = cfg.CheckFiles()
	}
	if err := errors.Join(decodeErr, cfg.Validate(), filesErr); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// yamlError turns a *yaml.TypeError into one error per problem.
func yamlError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		errs := make([]error, len(te.Errors))
		for i, e := range te.Errors {
			errs[i] = errors.New(e)
		}
		return errors.Join(errs...)
	}
	return err
}

// mappingValue returns the value node of key in the document's top-level mapping.
func mappingValue(doc *yaml.Node, key string) *yaml.Node {
	n := doc
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func cloneCheck(c health.CheckConfig) health.CheckConfig {
	c.HTTP.Headers = maps.Clone(c.HTTP.Headers)
	c.HTTP.ExpectedStatuses = slices.Clone(c.HTTP.ExpectedStatuses)
	return c
}

// Validate checks the whole configuration and returns every problem, each naming its field.
func (c *Config) Validate() error {
	var errs field.Errors
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs.Addf("log.level", "must be one of debug, info, warn, error, got %q", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		errs.Addf("log.format", "must be text or json, got %q", c.Log.Format)
	}
	errs.Add("admin", c.Admin.Validate())
	if !field.NameRE.MatchString(c.Node.Datacenter) {
		errs.Addf("node.datacenter", "%q must be one DNS label: lowercase letters, digits and '-'", c.Node.Datacenter)
	}
	if c.Discovery.MaxStateAge < 0 {
		errs.Addf("discovery.max_state_age", "must be >= 0")
	}
	errs.Add("consul", c.Consul.Validate())
	errs.Add("service", c.Service.Validate())
	if c.Service.Name != "" && !c.Consul.Enabled {
		errs.Addf("service.name", "registering a service needs consul.enabled")
	}
	errs.Add("defaults.check", c.Defaults.Check.Validate())
	errs.Add("defaults", c.Defaults.Policy.Validate())
	errs.Add("xds", c.XDS.Validate())
	errs.Add("defaults.dns", c.Defaults.DNS.Validate())
	errs.Add("dns", c.DNS.Validate())
	if len(c.Upstreams) == 0 && !c.AllowEmpty && !(c.Consul.Enabled && c.Consul.Catalog.Filter != "") {
		errs.Addf("upstreams", "none: set allow_empty: true to run without upstreams (an empty or truncated file is refused)")
	}
	seen := map[string]int{}
	ports := map[int]int{}
	for i, u := range c.Upstreams {
		p := fmt.Sprintf("upstreams[%d]", i)
		switch j, dup := seen[u.Name]; {
		case u.Name == "":
			errs.Addf(p+".name", "must be set")
		case !field.NameRE.MatchString(u.Name):
			errs.Addf(p+".name", "%q must be lowercase letters, digits and '-', at most 63 characters", u.Name)
		case dup:
			errs.Addf(p+".name", "%q is already the name of upstreams[%d]", u.Name, j)
		default:
			seen[u.Name] = i
		}
		errs.Add(p+".check", u.Check.Validate())
		errs.Add(p, u.Policy.Validate())
		errs.Add(p+".xds", u.XDS.Validate())
		if j, dup := ports[u.XDS.ListenPort]; dup && u.XDS.ListenPort > 0 {
			errs.Addf(p+".xds.listen_port", "%d is already the listen_port of upstreams[%d]", u.XDS.ListenPort, j)
		} else if u.XDS.ListenPort > 0 {
			ports[u.XDS.ListenPort] = i
		}
		errs.Add(p+".dns", u.DNS.Validate())
		if u.Forward != nil {
			errs.Add(p+".forward", u.Forward.Validate())
		}
		if u.Consul != nil {
			errs.Add(p+".consul", u.Consul.Validate())
			if !c.Consul.Enabled {
				errs.Addf(p+".consul", "needs consul.enabled")
			}
		}
		if len(u.Instances) == 0 && u.Consul == nil {
			errs.Addf(p+".instances", "must not be empty (or set consul)")
		}
		addrs := map[string]int{}
		for j, in := range u.Instances {
			ip := fmt.Sprintf("%s.instances[%d]", p, j)
			errs.Add(ip, in.Validate())
			hp := net.JoinHostPort(in.Address, strconv.Itoa(in.Port))
			if k, dup := addrs[hp]; dup && in.Address != "" {
				errs.Addf(ip, "%s is the same address and port as instances[%d]", hp, k)
			}
			addrs[hp] = j
		}
	}
	if in := c.XDS.Inbound; in.Name != "" {
		if host, p, err := net.SplitHostPort(in.Listen); err == nil && host == c.XDS.ListenerAddress {
			port, _ := strconv.Atoi(p)
			if j, dup := ports[port]; dup {
				errs.Addf("xds.inbound.listen", "%s is also the listener of upstreams[%d] (xds.listen_port %d)", in.Listen, j, port)
			}
		}
	}
	c.validateForwardListens(&errs)
	errs.Add("share", c.Share.Validate())
	return errs.Err()
}

// StaticUpstreams returns the upstreams' static lists for discovery/static.
func (c *Config) StaticUpstreams() []static.Upstream {
	out := make([]static.Upstream, 0, len(c.Upstreams))
	for _, u := range c.Upstreams {
		if len(u.Instances) > 0 {
			out = append(out, static.Upstream{Name: u.Name, Instances: u.Instances})
		}
	}
	return out
}

// ConsulUpstreams returns the upstreams discovered in Consul, by name, for discovery/consul.
func (c *Config) ConsulUpstreams() map[string]consul.Upstream {
	out := map[string]consul.Upstream{}
	for _, u := range c.Upstreams {
		if u.Consul != nil {
			out[u.Name] = *u.Consul
		}
	}
	return out
}

// TableConfig returns the table's policy configuration.
func (c *Config) TableConfig() table.Config {
	tc := table.Config{Zone: c.Node.Zone, Default: c.Defaults.Policy, Upstreams: map[string]table.Policy{}}
	for _, u := range c.Upstreams {
		tc.Upstreams[u.Name] = u.Policy
	}
	return tc
}

// XDSConfig returns the xDS server's configuration, with each upstream's xds settings.
func (c *Config) XDSConfig() xds.Config {
	x := c.XDS
	x.Upstreams = make(map[string]xds.UpstreamConfig, len(c.Upstreams))
	for _, u := range c.Upstreams {
		x.Upstreams[u.Name] = u.XDS
	}
	return x
}

// DNSConfig returns the DNS frontend's configuration, with the local datacenter and
// the answer TTL of each upstream.
func (c *Config) DNSConfig() dns.Config {
	d := c.DNS
	d.Datacenter = c.Node.Datacenter
	d.TTL = c.Defaults.DNS.TTL
	d.TTLs = make(map[string]time.Duration, len(c.Upstreams))
	for _, u := range c.Upstreams {
		d.TTLs[u.Name] = u.DNS.TTL
	}
	return d
}

// Checks returns the health check of each upstream.
func (c *Config) Checks() map[string]health.CheckConfig {
	m := make(map[string]health.CheckConfig, len(c.Upstreams))
	for _, u := range c.Upstreams {
		m[u.Name] = u.Check
	}
	return m
}

// Forwards returns the forwarder's configuration of each upstream that has a forward block.
func (c *Config) Forwards() map[string]forward.Config {
	m := map[string]forward.Config{}
	for _, u := range c.Upstreams {
		if u.Forward != nil {
			m[u.Name] = *u.Forward
		}
	}
	return m
}

// SharedUpstreams returns the upstreams whose probing is shared (none unless share.enabled).
func (c *Config) SharedUpstreams() []string {
	var out []string
	for _, u := range c.Upstreams {
		if c.Share.Enabled && (u.Share == nil || *u.Share) {
			out = append(out, u.Name)
		}
	}
	return out
}
