package discovery

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vigil-sidecar/vigil/internal/atomicfile"
)

// ManagerOptions configures a Manager.
type ManagerOptions struct {
	// StateFile, if set, is where the merged membership is persisted after each change
	// and read at start, so that a restart while a source is unreachable still knows every instance.
	StateFile string
	// MaxStateAge is the oldest persisted state that is used at start (0: any age).
	MaxStateAge time.Duration
	// Logger receives the manager's log lines; nil discards them.
	Logger *slog.Logger
}

// Manager runs discoverers and merges what they send into one Membership.
type Manager struct {
	opts      ManagerOptions
	log       *slog.Logger
	providers map[string]Discoverer
	out       chan Membership
	changed   chan struct{}

	mu     sync.Mutex
	groups map[string]Group // by namespaced source
	seen   map[string]bool  // providers that sent their first full set
}

// NewManager returns a Manager with no discoverers.
func NewManager(opts ManagerOptions) *Manager {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{
		opts:      opts,
		log:       log,
		providers: map[string]Discoverer{},
		out:       make(chan Membership, 1),
		changed:   make(chan struct{}, 1),
		groups:    map[string]Group{},
		seen:      map[string]bool{},
	}
}

// Register adds a discoverer under a unique name; call it before Run.
// The sources of its groups are namespaced with that name.
func (m *Manager) Register(name string, d Discoverer) { m.providers[name] = d }

// SyncCh delivers the latest merged membership; a reader that falls behind sees only the newest.
func (m *Manager) SyncCh() <-chan Membership { return m.out }

// Run runs every discoverer until ctx ends and publishes merged memberships.
func (m *Manager) Run(ctx context.Context) error {
	if m.opts.StateFile != "" {
		if err := m.load(); err != nil {
			m.log.Warn("discovery: persisted membership not used", "file", m.opts.StateFile, "err", err)
		}
		m.dropOrphans()
	}
	var wg sync.WaitGroup
	for name, d := range m.providers {
		up := make(chan []Group)
		wg.Go(func() { d.Run(ctx, up) })
		wg.Go(func() { m.receive(ctx, name, up) })
	}
	defer wg.Wait()

	m.signal() // publish the persisted state, or an empty ready membership when there is no provider
	// The state file is written on each change and refreshed once a minute, so that its save
	// time tells how recently the in-sync groups in it were confirmed.
	refresh := time.NewTicker(persistRefresh)
	defer refresh.Stop()
	var last []byte
	var groups []Group
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-refresh.C:
			last = nil
		case <-m.changed:
			var mem Membership
			mem, groups = m.merge()
			m.publish(mem)
		}
		if m.opts.StateFile == "" || groups == nil {
			continue
		}
		b, err := json.Marshal(groups)
		if err != nil || string(b) == string(last) {
			continue
		}
		if err := m.save(groups); err != nil {
			m.log.Error("discovery: persist membership", "file", m.opts.StateFile, "err", err)
			continue
		}
		last = b
	}
}

// persistRefresh is how often an unchanged membership is written again.
const persistRefresh = time.Minute

// dropOrphans forgets persisted groups of providers that are not registered any more (the
// configuration no longer uses them): nobody would ever confirm or remove them.
func (m *Manager) dropOrphans() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.groups {
		provider, _, _ := strings.Cut(k, "/")
		if _, ok := m.providers[provider]; !ok {
			m.log.Info("discovery: persisted group of a provider no longer configured, dropped", "source", k)
			delete(m.groups, k)
		}
	}
}

func (m *Manager) receive(ctx context.Context, name string, up <-chan []Group) {
	for {
		select {
		case <-ctx.Done():
			return
		case gs := <-up:
			m.mu.Lock()
			if !m.seen[name] {
				m.seen[name] = true
				// The first send is the provider's full set: drop whatever persisted state it
				// replaces, except for the sources it asks to keep.
				keep, keepAll := map[string]bool{}, false
				for _, g := range gs {
					if g.Keep {
						keep[name+"/"+g.Source] = true
						keepAll = keepAll || g.Source == ""
					}
				}
				named := map[string]bool{}
				for _, g := range gs {
					named[name+"/"+g.Source] = true
				}
				for k := range m.groups {
					if !strings.HasPrefix(k, name+"/") || keep[k] || (keepAll && !named[k]) {
						continue
					}
					delete(m.groups, k)
				}
			}
			for _, g := range gs {
				if g.Keep {
					continue
				}
				g.Source = name + "/" + g.Source
				if len(g.Instances) == 0 {
					delete(m.groups, g.Source)
					continue
				}
				m.groups[g.Source] = g
			}
			m.mu.Unlock()
			m.signal()
		}
	}
}

func (m *Manager) signal() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

func (m *Manager) publish(mem Membership) {
	select { // replace an unread older value
	case <-m.out:
	default:
	}
	m.out <- mem
}

// merge builds the membership from the current groups; it also returns the groups, sorted by source.
func (m *Manager) merge() (Membership, []Group) {
	m.mu.Lock()
	groups := make([]Group, 0, len(m.groups))
	for _, g := range m.groups {
		groups = append(groups, g)
	}
	ready := len(m.seen) == len(m.providers)
	m.mu.Unlock()
	slices.SortFunc(groups, func(a, b Group) int { return cmp.Compare(a.Source, b.Source) })
	return Merge(groups, ready), groups
}

// Merge unions groups by upstream; the first group that names an instance ID wins.
func Merge(groups []Group, ready bool) Membership {
	mem := Membership{Upstreams: map[string]*Upstream{}, Ready: ready}
	seen := map[Key]struct{}{}
	for _, g := range groups {
		u := mem.Upstreams[g.Upstream]
		if u == nil {
			u = &Upstream{Name: g.Upstream}
			mem.Upstreams[g.Upstream] = u
		}
		for _, in := range g.Instances {
			k := Key{Upstream: g.Upstream, ID: in.ID}
			if _, dup := seen[k]; !dup {
				seen[k] = struct{}{}
				u.Instances = append(u.Instances, in)
			}
		}
		if !g.Synced.IsZero() && (u.Synced.IsZero() || g.Synced.Before(u.Synced)) {
			u.Synced = g.Synced
		}
	}
	for _, u := range mem.Upstreams {
		slices.SortFunc(u.Instances, func(a, b Instance) int { return cmp.Compare(a.ID, b.ID) })
	}
	return mem
}

type state struct {
	Saved  time.Time `json:"saved"`
	Groups []Group   `json:"groups"`
}

func (m *Manager) load() error {
	b, err := os.ReadFile(m.opts.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	used := 0
	for _, g := range st.Groups {
		if g.Synced.IsZero() { // in sync when saved: confirmed at the save time
			g.Synced = st.Saved
		}
		if age := time.Since(g.Synced); m.opts.MaxStateAge > 0 && age > m.opts.MaxStateAge {
			m.log.Warn("discovery: persisted group too old, not used", "source", g.Source,
				"age", age.Round(time.Second), "max_state_age", m.opts.MaxStateAge)
			continue
		}
		m.groups[g.Source] = g
		used++
	}
	if used == 0 && len(st.Groups) > 0 {
		return fmt.Errorf("every group is older than %s", m.opts.MaxStateAge)
	}
	m.log.Info("discovery: loaded persisted membership", "file", m.opts.StateFile, "groups", len(st.Groups), "saved", st.Saved)
	return nil
}

func (m *Manager) save(groups []Group) error {
	b, err := json.MarshalIndent(state{Saved: time.Now().UTC(), Groups: groups}, "", " ")
	if err != nil {
		return err
	}
	return atomicfile.Write(m.opts.StateFile, b)
}
