package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vigil-sidecar/vigil/internal/atomicfile"
	"github.com/vigil-sidecar/vigil/internal/secret"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// control is the running app as the admin API's control endpoints see it: reload, and the
// operator's maintenance holds, which the table applies and a file next to the discovery state keeps.
type control struct {
	a     *app
	file  string // where the holds are persisted; "" when discovery.state_file is not set
	local string // the local service's upstream name, "" without one

	mu sync.Mutex // one change of holds at a time
}

var _ admin.Controller = (*control)(nil)

// maintFile returns the maintenance state file next to the discovery state file:
// state.json -> state.maint.json; "" when there is none.
func maintFile(stateFile string) string {
	if stateFile == "" {
		return ""
	}
	return strings.TrimSuffix(stateFile, filepath.Ext(stateFile)) + ".maint.json"
}

// holdsFile is the persisted form of the holds.
type holdsFile struct {
	Holds []table.Hold `json:"holds"`
}

// setupControl reads the admin token, loads the persisted holds into the table (and Consul's
// maintenance of the local service) and turns the control endpoints on when a token is set.
func (a *app) setupControl() error {
	c := &control{a: a, file: maintFile(a.cfg.Discovery.StateFile)}
	if a.cfg.Service.Name != "" {
		c.local = localUpstream(a.cfg.Service.Name)
	}
	a.ctl = c
	if c.file != "" {
		b, err := os.ReadFile(c.file)
		var hf holdsFile
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			a.log.Error("vigil: maintenance state not loaded: instances held before are served", "file", c.file, "err", err)
		default:
			if err := json.Unmarshal(b, &hf); err != nil {
				a.log.Error("vigil: maintenance state not loaded: instances held before are served", "file", c.file, "err", err)
			}
		}
		if len(hf.Holds) > 0 {
			a.table.SetHolds(hf.Holds)
			a.log.Info("vigil: maintenance state loaded", "file", c.file, "holds", len(hf.Holds))
			if on, reason := c.localHeld(hf.Holds); on && a.consul != nil && a.consul.reg != nil {
				a.consul.reg.Maintenance(true, reason)
			}
		}
	}
	f := a.cfg.Admin.TokenFile
	if f == "" {
		return nil
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return fmt.Errorf("admin.token_file: %w", err)
	}
	tok := secret.Secret(strings.TrimSpace(string(b)))
	if tok == "" {
		return fmt.Errorf("admin.token_file: %s is empty", f)
	}
	a.admin.SetControl(c, tok)
	return nil
}

// reloadConfig reads the configuration again and applies it, all or nothing: SIGHUP and
// POST /v1/reload both come here, one at a time. It returns the changed settings that need a restart.
func (a *app) reloadConfig() ([]string, error) {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	if a.reload == nil {
		return nil, errors.New("reload: this vigil has no configuration to read again")
	}
	cfg, err := a.reload()
	if err != nil {
		return nil, err
	}
	return a.apply(cfg), nil
}

// Reload implements admin.Controller.
func (c *control) Reload(admin.Who) ([]string, error) { return c.a.reloadConfig() }

// Holds implements admin.Controller.
func (c *control) Holds() []table.Hold { return c.a.table.Holds() }

// Hold implements admin.Controller: it changes the table's holds, persists them, and for the local
// service also sets Consul's own maintenance mode.
func (c *control) Hold(_ admin.Who, h table.Hold, on bool) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	holds := c.a.table.Holds()
	i := slices.IndexFunc(holds, func(x table.Hold) bool { return x.Target() == h.Target() })
	if on {
		if err := c.known(h); err != nil {
			return nil, err
		}
		h.Since = time.Now().UTC().Truncate(time.Millisecond)
		if i >= 0 {
			holds[i] = h
		} else {
			holds = append(holds, h)
		}
	} else {
		if i < 0 {
			return nil, fmt.Errorf("%s is not in maintenance: %w", h.Target(), admin.ErrNotFound)
		}
		holds = slices.Delete(holds, i, i+1)
	}
	c.a.table.SetHolds(holds)
	var warns []string
	if c.file == "" {
		warns = append(warns, "not persisted (set discovery.state_file): lost at the next restart")
	} else if err := c.save(holds); err != nil {
		warns = append(warns, "not persisted: "+err.Error())
		c.a.log.Error("vigil: maintenance state not saved", "file", c.file, "err", err)
	}
	if h.Upstream == c.local && c.local != "" && c.a.consul != nil && c.a.consul.reg != nil {
		held, reason := c.localHeld(holds)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.a.consul.reg.SetMaintenance(ctx, held, reason); err != nil {
			warns = append(warns, "consul: "+err.Error())
		}
	}
	return warns, nil
}

// known reports an error wrapping admin.ErrNotFound unless h names a known upstream and instance.
func (c *control) known(h table.Hold) error {
	u := c.a.table.Snapshot().Lookup(h.Upstream)
	if u == nil {
		return fmt.Errorf("no upstream %q: %w", h.Upstream, admin.ErrNotFound)
	}
	if h.Instance != "" && !slices.ContainsFunc(u.Instances, func(in table.Instance) bool { return in.ID == h.Instance }) {
		return fmt.Errorf("no instance %q in upstream %q: %w", h.Instance, h.Upstream, admin.ErrNotFound)
	}
	return nil
}

// localHeld reports whether holds hold the local service, and why.
func (c *control) localHeld(holds []table.Hold) (bool, string) {
	for _, h := range holds {
		if c.local != "" && h.Upstream == c.local {
			reason := h.Reason
			if reason == "" {
				reason = "vigil maintenance"
			}
			return true, reason
		}
	}
	return false, ""
}

func (c *control) save(holds []table.Hold) error {
	b, err := json.MarshalIndent(holdsFile{Holds: holds}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(c.file, append(b, '\n'))
}
