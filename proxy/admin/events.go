package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/vigil-sidecar/vigil/proxy/table"
)

const (
	// DefaultMaxSubscribers bounds the open GET /v1/events streams.
	DefaultMaxSubscribers = 16
	// sampleEvery is how often the instances' probe statistics are sampled for the history.
	sampleEvery = 500 * time.Millisecond
	// minGap spaces the views published to event streams: each is the whole table, encoded once
	// for every stream, so a burst of changes costs one view per gap.
	minGap = 100 * time.Millisecond
	// keepAlive is the interval of SSE comments on an otherwise quiet stream.
	keepAlive = 15 * time.Second
	// writeTimeout bounds one write to an event stream: a client that reads slower is dropped.
	writeTimeout = 10 * time.Second
)

// Subscriber is a Snapshotter that also tells when a new snapshot is published (*table.Table).
type Subscriber interface {
	Subscribe() (<-chan struct{}, func())
}

// hub fans the latest view out to event-stream subscribers. Publishing never blocks: each
// subscriber holds at most one pending view, and a newer one replaces it (coalescing).
type hub struct {
	mu   sync.Mutex
	max  int
	subs map[chan []byte]struct{}
}

func (h *hub) subscribe() (chan []byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) >= h.max {
		return nil, false
	}
	ch := make(chan []byte, 1)
	h.subs[ch] = struct{}{}
	return ch, true
}

func (h *hub) unsubscribe(ch chan []byte) {
	h.mu.Lock()
	delete(h.subs, ch)
	h.mu.Unlock()
}

func (h *hub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

func (h *hub) publish(b []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- b:
			continue
		default:
		}
		select { // a slow reader: replace its pending view with this one
		case <-ch:
		default:
		}
		select {
		case ch <- b:
		default:
		}
	}
}

// Subscribers returns the number of open event streams.
func (s *Server) Subscribers() int { return s.hub.count() }

// watch records history and publishes a view to the event streams after each new snapshot
// and whenever a probe result was sampled, until ctx ends.
func (s *Server) watch(ctx context.Context) {
	var changes <-chan struct{}
	if sub, ok := s.table.(Subscriber); ok {
		ch, cancel := sub.Subscribe()
		defer cancel()
		changes = ch
	}
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	var published uint64
	var last time.Time
	for {
		snap := s.table.Snapshot()
		changed := s.hist.observe(snap, time.Now())
		if (changed || snap.Version != published) && s.hub.count() > 0 {
			if wait := minGap - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				snap = s.table.Snapshot()
				s.hist.observe(snap, time.Now())
			}
			if b, err := json.Marshal(view(snap, time.Now(), s.hist)); err == nil {
				s.hub.publish(b)
				published, last = snap.Version, time.Now()
			} else {
				s.log.Error("admin: encode event", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-tick.C:
		}
	}
}

// events serves GET /v1/events: a server-sent event stream whose "table" events each carry
// the whole view (the JSON of GET /v1/upstreams), the first at once, then one after each change.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	ch, ok := s.hub.subscribe()
	if !ok {
		w.Header().Set("Retry-After", "5")
		http.Error(w, fmt.Sprintf("admin: too many event streams (%d)", s.hub.max), http.StatusServiceUnavailable)
		return
	}
	defer s.hub.unsubscribe(ch)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(parts ...[]byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout)) // the server's WriteTimeout would end the stream
		for _, p := range parts {
			if _, err := w.Write(p); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	first, err := json.Marshal(s.view())
	if err != nil || !write([]byte("retry: 1000\n\n"), eventPrefix, first, eventSuffix) {
		return
	}
	ping := time.NewTicker(keepAlive)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		case b := <-ch:
			if !write(eventPrefix, b, eventSuffix) {
				return
			}
		case <-ping.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		}
	}
}

var (
	eventPrefix = []byte("event: table\ndata: ")
	eventSuffix = []byte("\n\n")
)

func (s *Server) view() Table { return view(s.table.Snapshot(), time.Now(), s.hist) }

var _ Subscriber = (*table.Table)(nil)
