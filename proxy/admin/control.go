package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/vigil-sidecar/vigil/internal/field"
	"github.com/vigil-sidecar/vigil/internal/secret"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// Control configures the runtime control endpoints (POST /v1/reload, /v1/maint).
type Control struct {
	// TokenFile holds the bearer token that the control endpoints require (default "": the
	// endpoints are off and answer 404). Read at start.
	TokenFile string `yaml:"token_file"`
}

// Who says who asks for a change and why, for the log and the maintenance record.
type Who struct {
	Remote string // the client's address
	Actor  string // X-Vigil-Actor, "" if not given
	Reason string
}

// ErrNotFound is wrapped by a Controller's error about an upstream or instance it does not know.
var ErrNotFound = errors.New("not found")

// Controller applies what the control endpoints ask for; cmd/vigil's running app implements it.
type Controller interface {
	// Reload reads the configuration again and applies it all or nothing, as SIGHUP does. It
	// returns the settings it could not apply (they need a restart), or every error found.
	Reload(who Who) (restartOnly []string, err error)
	// Hold puts h's target into maintenance (on) or takes it out. Warnings say what went only
	// partly (not persisted, Consul not told); an error wrapping ErrNotFound names an unknown target.
	Hold(who Who, h table.Hold, on bool) (warnings []string, err error)
	// Holds returns the targets in maintenance.
	Holds() []table.Hold
}

// control is the control endpoints' state: off until SetControl.
type control struct {
	c     Controller
	token secret.Secret
}

// SetControl turns the control endpoints on: they require token as a bearer token and apply
// changes through c. An empty token leaves them off. Call it before Run.
func (s *Server) SetControl(c Controller, token secret.Secret) {
	if c == nil || token == "" {
		s.ctl.Store(nil)
		return
	}
	s.ctl.Store(&control{c: c, token: token})
}

type controlPtr = atomic.Pointer[control]

func (s *Server) controlRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/reload", s.authorized(s.reload))
	mux.HandleFunc("GET /v1/maint", s.authorized(func(c Controller, w http.ResponseWriter, _ *http.Request, _ Who) {
		writeJSON(w, http.StatusOK, map[string]any{"holds": nonNil(c.Holds())})
	}))
	for _, p := range []string{"/v1/maint/{upstream}", "/v1/maint/{upstream}/{instance...}"} {
		mux.HandleFunc("PUT "+p, s.authorized(s.maint(true)))
		mux.HandleFunc("DELETE "+p, s.authorized(s.maint(false)))
	}
}

// authorized checks the bearer token, in constant time, then calls h with who asks and why.
func (s *Server) authorized(h func(Controller, http.ResponseWriter, *http.Request, Who)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctl := s.ctl.Load()
		if ctl == nil {
			writeJSON(w, http.StatusNotFound, errorBody("runtime control is off: set admin.token_file"))
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vigil"`)
			writeJSON(w, http.StatusUnauthorized, errorBody("missing bearer token"))
			return
		}
		if !ctl.token.Equal(strings.TrimSpace(tok)) {
			s.log.Warn("admin: control refused: wrong token", "remote", r.RemoteAddr, "path", r.URL.Path)
			writeJSON(w, http.StatusForbidden, errorBody("wrong token"))
			return
		}
		var body struct {
			Reason string `json:"reason"`
		}
		if r.ContentLength != 0 && r.Body != nil {
			if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
				writeJSON(w, http.StatusBadRequest, errorBody("body: "+err.Error()))
				return
			}
		}
		if q := r.URL.Query().Get("reason"); q != "" {
			body.Reason = q
		}
		h(ctl.c, w, r, Who{Remote: r.RemoteAddr, Actor: r.Header.Get("X-Vigil-Actor"), Reason: body.Reason})
	}
}

// ReloadResult is the answer of POST /v1/reload.
type ReloadResult struct {
	Applied bool `json:"applied"`
	// RestartRequired are the changed settings not applied: they take effect at the next start.
	RestartRequired []string `json:"restart_required,omitempty"`
	Message         string   `json:"message"`
	Errors          []string `json:"errors,omitempty"`
}

func (s *Server) reload(c Controller, w http.ResponseWriter, _ *http.Request, who Who) {
	log := s.log.With("remote", who.Remote, "actor", who.Actor, "reason", who.Reason)
	restart, err := c.Reload(who)
	if err != nil {
		errs := field.Flatten(err)
		res := ReloadResult{Message: fmt.Sprintf("reload refused, the running configuration is kept: %d error(s)", len(errs))}
		for _, e := range errs {
			res.Errors = append(res.Errors, e.Error())
		}
		log.Warn("admin: reload refused", "errors", len(errs))
		writeJSON(w, http.StatusUnprocessableEntity, res)
		return
	}
	res := ReloadResult{Applied: true, RestartRequired: restart, Message: "configuration reloaded"}
	if len(restart) > 0 {
		res.Message = "configuration reloaded, except settings that need a restart (kept as running): " + strings.Join(restart, ", ")
	}
	log.Info("admin: reload", "restart_required", restart)
	writeJSON(w, http.StatusOK, res)
}

// MaintResult is the answer of PUT and DELETE /v1/maint/UPSTREAM[/INSTANCE].
type MaintResult struct {
	Target      string       `json:"target"`
	Maintenance bool         `json:"maintenance"`
	Warnings    []string     `json:"warnings,omitempty"`
	Holds       []table.Hold `json:"holds"`
}

func (s *Server) maint(on bool) func(Controller, http.ResponseWriter, *http.Request, Who) {
	return func(c Controller, w http.ResponseWriter, r *http.Request, who Who) {
		h := table.Hold{Upstream: r.PathValue("upstream"), Instance: r.PathValue("instance"), Reason: who.Reason, Actor: who.Actor}
		if h.Actor == "" {
			h.Actor = who.Remote
		}
		warns, err := c.Hold(who, h, on)
		log := s.log.With("target", h.Target(), "maintenance", on, "remote", who.Remote, "actor", who.Actor, "reason", who.Reason)
		if err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, ErrNotFound) {
				code = http.StatusNotFound
			}
			log.Warn("admin: maintenance refused", "err", err)
			writeJSON(w, code, errorBody(err.Error()))
			return
		}
		log.Info("admin: maintenance", "warnings", warns)
		writeJSON(w, http.StatusOK, MaintResult{Target: h.Target(), Maintenance: on, Warnings: warns, Holds: nonNil(c.Holds())})
	}
}

func errorBody(msg string) map[string]string { return map[string]string{"error": msg} }

func nonNil(h []table.Hold) []table.Hold {
	if h == nil {
		return []table.Hold{}
	}
	return h
}
