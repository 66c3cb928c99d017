package share

import (
	"net"
	"strconv"
	"time"

	"github.com/vigil-sidecar/vigil/internal/field"
)

// Config configures shared probing (the share: block). Off by default.
type Config struct {
	// Enabled turns shared probing on (default false: every vigil probes every instance).
	Enabled bool `yaml:"enabled"`
	// Bind is the address that the gossip (memberlist) listens on, TCP and UDP (default 0.0.0.0).
	Bind string `yaml:"bind"`
	// Port of the gossip, TCP and UDP (default 7947; 0 picks one).
	Port int `yaml:"port"`
	// Advertise is the address told to the other vigils (default: the bind address, or the
	// first private address when bound to 0.0.0.0).
	Advertise string `yaml:"advertise"`
	// Join are host:port gossip addresses of other vigils; one live one is enough (default none:
	// this vigil waits to be joined).
	Join []string `yaml:"join"`
	// Owners is the number k of vigils that actively probe each instance (default 2).
	Owners int `yaml:"owners"`
	// MaxVerdictAge is the age after which the owners' verdict is no longer trusted and this
	// vigil probes the instance itself, at its own interval (default 5s). Owners refresh
	// their verdicts every third of it.
	MaxVerdictAge time.Duration `yaml:"max_verdict_age"`
	// IdleInterval is how often a vigil probes an instance that others own, while their verdict
	// is fresh (default 0: never on a timer; its watch connection and passive signals still
	// trigger a probe at once).
	IdleInterval time.Duration `yaml:"idle_interval"`
	// ProbeInterval is memberlist's failure-detection probe interval (default 1s, its LAN value).
	ProbeInterval time.Duration `yaml:"probe_interval"`
	// GossipInterval is memberlist's gossip interval (default 200ms, its LAN value).
	GossipInterval time.Duration `yaml:"gossip_interval"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Bind:           "0.0.0.0",
		Port:           7947,
		Owners:         2,
		MaxVerdictAge:  5 * time.Second,
		ProbeInterval:  time.Second,
		GossipInterval: 200 * time.Millisecond,
	}
}

// Validate checks c; errors name the field.
func (c *Config) Validate() error {
	var errs field.Errors
	if !c.Enabled {
		return nil
	}
	if net.ParseIP(c.Bind) == nil {
		errs.Addf("bind", "must be an IP address, got %q", c.Bind)
	}
	if c.Advertise != "" && net.ParseIP(c.Advertise) == nil {
		errs.Addf("advertise", "must be an IP address, got %q", c.Advertise)
	}
	if c.Port < 0 || c.Port > 65535 {
		errs.Addf("port", "must be within 0-65535, got %d", c.Port)
	}
	for i, j := range c.Join {
		errs.Add("join["+strconv.Itoa(i)+"]", field.HostPort(j, false))
	}
	if c.Owners < 1 {
		errs.Addf("owners", "must be >= 1, got %d", c.Owners)
	}
	if c.MaxVerdictAge <= 0 {
		errs.Addf("max_verdict_age", "must be > 0")
	}
	if c.IdleInterval < 0 {
		errs.Addf("idle_interval", "must be >= 0")
	}
	if c.ProbeInterval <= 0 {
		errs.Addf("probe_interval", "must be > 0")
	}
	if c.GossipInterval <= 0 {
		errs.Addf("gossip_interval", "must be > 0")
	} else if c.MaxVerdictAge > 0 && c.GossipInterval*3 > c.MaxVerdictAge {
		errs.Addf("max_verdict_age", "must be at least 3 gossip_interval (%s)", 3*c.GossipInterval)
	}
	return errs.Err()
}
