// Package static discovers upstream instances from a fixed list in the configuration.
package static

import (
	"context"
	"strconv"

	"github.com/vigil-sidecar/vigil/configs/field"
	"github.com/vigil-sidecar/vigil/discovery"
)

// Instance is one configured instance of an upstream.
type Instance struct {
	// ID identifies the instance within its upstream (default: address:port).
	ID string `yaml:"id"`
	// Address is an IP address or a host name (required).
	Address string `yaml:"address"`
	// Port is the TCP port (required, 1-65535).
	Port int `yaml:"port"`
	// Zone is the instance's availability zone (default: none).
	Zone string `yaml:"zone"`
	// Weight is its share of traffic relative to the others (default 1, 1-128).
	Weight int `yaml:"weight"`
	// Tags are free-form labels, matched by DNS tag queries.
	Tags []string `yaml:"tags"`
	// Meta is free-form key/value metadata.
	Meta map[string]string `yaml:"meta"`
}

// Validate checks one instance.
func (c *Instance) Validate() error {
	var errs field.Errors
	if c.Address == "" {
		errs.Addf("address", "must be set")
	}
	if c.Port < 1 || c.Port > 65535 {
		errs.Addf("port", "must be between 1 and 65535, got %d", c.Port)
	}
	if c.Weight < 0 || c.Weight > 128 {
		errs.Addf("weight", "must be between 1 and 128, got %d", c.Weight)
	}
	return errs.Err()
}

// Upstream is the static list for one upstream.
type Upstream struct {
	Name      string
	Instances []Instance
}

// Discovery sends a fixed list once.
type Discovery struct{ groups []discovery.Group }

// New returns a Discovery for the given upstreams, applying defaults.
func New(ups []Upstream) *Discovery {
	d := &Discovery{}
	for _, u := range ups {
		g := discovery.Group{Source: u.Name, Upstream: u.Name}
		for _, c := range u.Instances {
			in := discovery.Instance{
				ID: c.ID, Address: c.Address, Port: c.Port, Zone: c.Zone,
				Weight: c.Weight, Tags: c.Tags, Meta: c.Meta,
			}
			if in.ID == "" {
				in.ID = in.Address + ":" + strconv.Itoa(in.Port)
			}
			if in.Weight == 0 {
				in.Weight = 1
			}
			g.Instances = append(g.Instances, in)
		}
		d.groups = append(d.groups, g)
	}
	return d
}

// Run sends the list and waits for ctx to end.
func (d *Discovery) Run(ctx context.Context, up chan<- []discovery.Group) {
	select {
	case up <- d.groups:
	case <-ctx.Done():
		return
	}
	<-ctx.Done()
}

var _ discovery.Discoverer = (*Discovery)(nil)
