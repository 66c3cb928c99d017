package forward

import (
	"time"

	"github.com/vigil-sidecar/vigil/internal/field"
)

// Config is one upstream's forwarder: a local TCP listener whose connections go to the
// instances the table serves. A zero field takes its default.
type Config struct {
	// Listen is the local address to accept on, e.g. 127.0.0.1:15001 (required).
	Listen string `yaml:"listen" json:"listen"`
	// ConnectTimeout bounds one connect attempt to an instance (default 1s).
	ConnectTimeout time.Duration `yaml:"connect_timeout" json:"connect_timeout"`
	// ConnectBudget bounds all the connect attempts of one client connection (default 3s).
	ConnectBudget time.Duration `yaml:"connect_budget" json:"connect_budget"`
	// MaxAttempts is how many instances one client connection may try (default 3).
	MaxAttempts int `yaml:"max_attempts" json:"max_attempts"`
	// IdleTimeout closes a connection with no byte either way for that long (default 1h).
	IdleTimeout time.Duration `yaml:"idle_timeout" json:"idle_timeout"`
	// MaxConnections caps the open connections of the listener; more are closed at once (default 1024).
	MaxConnections int `yaml:"max_connections" json:"max_connections"`
	// Drain is how long connections to an instance that left the served set, or open at
	// shutdown, run on before they are closed (default 30s).
	Drain time.Duration `yaml:"drain" json:"drain"`
	// KeepAlive is the TCP keep-alive period on both sides (default 15s).
	KeepAlive time.Duration `yaml:"keep_alive" json:"keep_alive"`
	// MaxEjectionPercent is the largest share of the upstream's instances that connect
	// failures alone may make unhealthy (default 50).
	MaxEjectionPercent float64 `yaml:"max_ejection_percent" json:"max_ejection_percent"`
}

// Defaults.
const (
	DefaultConnectTimeout     = time.Second
	DefaultConnectBudget      = 3 * time.Second
	DefaultMaxAttempts        = 3
	DefaultIdleTimeout        = time.Hour
	DefaultMaxConnections     = 1024
	DefaultDrain              = 30 * time.Second
	DefaultKeepAlive          = 15 * time.Second
	DefaultMaxEjectionPercent = 50
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&c.ConnectTimeout, DefaultConnectTimeout)
	set(&c.ConnectBudget, DefaultConnectBudget)
	set(&c.IdleTimeout, DefaultIdleTimeout)
	set(&c.Drain, DefaultDrain)
	set(&c.KeepAlive, DefaultKeepAlive)
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxEjectionPercent == 0 {
		c.MaxEjectionPercent = DefaultMaxEjectionPercent
	}
	return c
}

// Validate checks c; errors name the field.
func (c *Config) Validate() error {
	var errs field.Errors
	if c.Listen == "" {
		errs.Addf("listen", "must be set")
	} else if err := field.HostPort(c.Listen, true); err != nil {
		errs.Addf("listen", "%v", err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"connect_timeout", c.ConnectTimeout}, {"connect_budget", c.ConnectBudget}, {"idle_timeout", c.IdleTimeout}, {"drain", c.Drain}, {"keep_alive", c.KeepAlive}} {
		if d.v < 0 {
			errs.Addf(d.name, "must be >= 0, got %s", d.v)
		}
	}
	if c.MaxAttempts < 0 || c.MaxAttempts > 100 {
		errs.Addf("max_attempts", "must be between 1 and 100, got %d", c.MaxAttempts)
	}
	if c.MaxConnections < 0 {
		errs.Addf("max_connections", "must be >= 0, got %d", c.MaxConnections)
	}
	if !(c.MaxEjectionPercent >= 0 && c.MaxEjectionPercent <= 100) { // NaN too
		errs.Addf("max_ejection_percent", "must be a percentage between 0 and 100, got %g", c.MaxEjectionPercent)
	}
	return errs.Err()
}
