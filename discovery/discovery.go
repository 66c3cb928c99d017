// Package discovery models who exists: upstream instances, the sources that find them, and their merge.
package discovery

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"time"
)

// Health is what a discovery source itself says of an instance (for Consul, its own checks).
type Health uint8

const (
	Passing     Health = iota // the source has nothing against the instance (the zero value)
	Critical                  // the source says the instance is down
	Maintenance               // the source says the instance is draining
	// NodeCritical: only the source's view of the node is failing (for Consul, the agent's
	// serfHealth, as while an agent rejoins after a restart); the service's own checks pass.
	// vigil's own probe of the instance decides; an instance vigil does not probe is down.
	NodeCritical
)

func (h Health) String() string {
	switch h {
	case Critical:
		return "critical"
	case Maintenance:
		return "maintenance"
	case NodeCritical:
		return "node_critical"
	default:
		return "passing"
	}
}

// MarshalText encodes h as its name.
func (h Health) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText decodes a name written by MarshalText. An unknown name is an error, not
// passing: a corrupted state file must not mark instances passing.
func (h *Health) UnmarshalText(b []byte) error {
	switch string(b) {
	case "passing":
		*h = Passing
	case "critical":
		*h = Critical
	case "maintenance":
		*h = Maintenance
	case "node_critical":
		*h = NodeCritical
	default:
		return fmt.Errorf("discovery: unknown health %q", b)
	}
	return nil
}

// Instance is one network endpoint of an upstream service.
type Instance struct {
	ID         string            `json:"id"` // unique within its upstream
	Address    string            `json:"address"`
	Port       int               `json:"port"`
	Zone       string            `json:"zone,omitempty"`
	Datacenter string            `json:"datacenter,omitempty"`
	Weight     int               `json:"weight"`
	Tags       []string          `json:"tags,omitempty"`
	Meta       map[string]string `json:"meta,omitempty"`
	// Failover is 0 for the local datacenter and n for the n-th fallback datacenter.
	Failover int `json:"failover,omitempty"`
	// Health is the source's own verdict, an input next to vigil's probes.
	Health Health `json:"health"`
}

// HostPort returns the instance's address and port joined for dialing.
func (i *Instance) HostPort() string { return net.JoinHostPort(i.Address, strconv.Itoa(i.Port)) }

// HasTag reports whether the instance carries tag t.
func (i *Instance) HasTag(t string) bool {
	for _, x := range i.Tags {
		if x == t {
			return true
		}
	}
	return false
}

// Key names one instance of one upstream.
type Key struct {
	Upstream string
	ID       string
}

func (k Key) String() string { return k.Upstream + "/" + k.ID }

// Group is what one source knows of one upstream at one time.
// A group with no instances removes that source's instances of the upstream.
type Group struct {
	Source    string     `json:"source"` // unique across all sources, e.g. "static/api"
	Upstream  string     `json:"upstream"`
	Instances []Instance `json:"instances"`
	// Synced is zero while the source is in sync with its origin (or has none, as static);
	// once the source has lost its origin, it is the time of the last successful sync.
	Synced time.Time `json:"synced,omitzero"`
	// Keep, in a send, says that the source could not confirm this group (its origin is
	// unreachable): the Manager keeps what it has for the source, e.g. the persisted group,
	// and ignores Instances. It lets a first full set name sources without dropping them.
	// A Keep group with an empty Source keeps every persisted group of the provider that the
	// first full set does not name (the provider could not even list its sources).
	Keep bool `json:"-"`
}

// Discoverer finds the instances of upstreams.
type Discoverer interface {
	// Run sends the full set of groups first, then groups that changed.
	// It must return when ctx is canceled and must not close up.
	// On an error it keeps its last state rather than send partial data.
	Run(ctx context.Context, up chan<- []Group)
}

// Upstream is the merged membership of one upstream service.
type Upstream struct {
	Name      string
	Instances []Instance // sorted by ID, unique IDs
	// Synced is the oldest last-sync time among the upstream's sources that lost their origin;
	// zero while every source is in sync.
	Synced time.Time
}

// Membership is the merged view of every source at one time.
type Membership struct {
	Upstreams map[string]*Upstream
	// Ready is true once every discoverer has sent its first full set.
	Ready bool
}

// Names returns the upstream names in order.
func (m *Membership) Names() []string {
	names := make([]string, 0, len(m.Upstreams))
	for n := range m.Upstreams {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
