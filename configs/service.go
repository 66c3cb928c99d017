package configs

import (
	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/internal/field"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// Service is the `service:` section: the local service that vigil registers in Consul, and how
// vigil's one health checker probes it.
type Service struct {
	consul.Service `yaml:",inline"`
	// Check is how vigil probes its own service (default: a tcp connect, with the built-in check defaults).
	Check health.CheckConfig `yaml:"check" json:"check"`
}

// DefaultService returns the built-in defaults (nothing registered).
func DefaultService() Service {
	return Service{Service: consul.DefaultService(), Check: health.DefaultCheck()}
}

// Validate checks s; errors name the field. A service with no name is not registered and not checked.
func (s *Service) Validate() error {
	if s.Name == "" {
		return nil
	}
	var errs field.Errors
	errs.Add("", s.Service.Validate())
	errs.Add("check", s.Check.Validate())
	return errs.Err()
}
