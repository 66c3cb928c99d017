// Package static discovers upstream instances from a fixed list in the configuration.
package static

import (
	"context"
	"slices"
	"strconv"
	"sync"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/field"
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

// Discovery sends a fixed list, and the new list after each Set.
type Discovery struct {
	mu      sync.Mutex
	groups  []discovery.Group
	ever    []discovery.Group      // every source ever listed, for removals
	updates chan []discovery.Group // the latest change not yet sent
}

// New returns a Discovery for the given upstreams, applying defaults.
func New(ups []Upstream) *Discovery {
	d := &Discovery{groups: groups(ups), updates: make(chan []discovery.Group, 1)}
	d.remember(d.groups)
	return d
}

// remember adds gs to the sources ever listed (their instances dropped).
func (d *Discovery) remember(gs []discovery.Group) {
	for _, g := range gs {
		if !slices.ContainsFunc(d.ever, func(e discovery.Group) bool { return e.Source == g.Source }) {
			d.ever = append(d.ever, discovery.Group{Source: g.Source, Upstream: g.Upstream})
		}
	}
}

// Set replaces the list (on a configuration reload); removed upstreams are sent as empty groups.
func (d *Discovery) Set(ups []Upstream) {
	next := groups(ups)
	d.mu.Lock()
	defer d.mu.Unlock()
	// Removals are computed against every list given so far, not only the last one: a change
	// replaced before Run sent it may have carried removals of its own.
	change := slices.Clone(next)
	for _, g := range d.ever {
		if !slices.ContainsFunc(next, func(n discovery.Group) bool { return n.Source == g.Source }) {
			change = append(change, discovery.Group{Source: g.Source, Upstream: g.Upstream})
		}
	}
	d.groups = next
	d.remember(next)
	select { // replace an unsent change: the full new list supersedes it
	case <-d.updates:
	default:
	}
	d.updates <- change
}

func groups(ups []Upstream) []discovery.Group {
	var out []discovery.Group
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
		out = append(out, g)
	}
	return out
}

// Run sends the list, then each change, until ctx ends.
func (d *Discovery) Run(ctx context.Context, up chan<- []discovery.Group) {
	d.mu.Lock()
	gs := d.groups
	d.mu.Unlock()
	for {
		select {
		case up <- gs:
		case <-ctx.Done():
			return
		}
		select {
		case gs = <-d.updates:
		case <-ctx.Done():
			return
		}
	}
}

var _ discovery.Discoverer = (*Discovery)(nil)
