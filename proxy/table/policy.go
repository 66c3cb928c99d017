package table

import (
	"github.com/vigil-sidecar/vigil/internal/field"
)

// Panic modes.
const (
	FailOpen   = "fail_open"   // in panic, serve every instance
	FailClosed = "fail_closed" // in panic, serve only the healthy ones, if any
)

// Policy says which instances of an upstream are served, for every frontend at once.
type Policy struct {
	// PanicThreshold is the healthy percentage below which the upstream is in panic (default 0: never).
	PanicThreshold float64 `yaml:"panic_threshold" json:"panic_threshold"`
	// PanicMode is fail_open (serve every instance while in panic) or fail_closed (default fail_open).
	PanicMode string `yaml:"panic_mode" json:"panic_mode"`
	// ZonePreference serves same-zone instances first (default false).
	ZonePreference bool `yaml:"zone_preference" json:"zone_preference"`
	// ZoneMinHealthy is the healthy percentage of the local zone below which traffic
	// spills over to the other zones as equals (default 70).
	ZoneMinHealthy float64 `yaml:"zone_min_healthy" json:"zone_min_healthy"`
}

// DefaultPolicy returns the built-in policy.
func DefaultPolicy() Policy {
	return Policy{PanicMode: FailOpen, ZoneMinHealthy: 70}
}

// Validate checks p; errors name the field.
func (p *Policy) Validate() error {
	var errs field.Errors
	if !(p.PanicThreshold >= 0 && p.PanicThreshold <= 100) { // NaN too
		errs.Addf("panic_threshold", "must be a percentage between 0 and 100, got %g", p.PanicThreshold)
	}
	if p.PanicMode != FailOpen && p.PanicMode != FailClosed {
		errs.Addf("panic_mode", "must be fail_open or fail_closed, got %q", p.PanicMode)
	}
	if !(p.ZoneMinHealthy >= 0 && p.ZoneMinHealthy <= 100) {
		errs.Addf("zone_min_healthy", "must be a percentage between 0 and 100, got %g", p.ZoneMinHealthy)
	}
	return errs.Err()
}
