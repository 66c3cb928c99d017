package consul

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Consul part's Prometheus metrics. One Metrics is shared by the
// Discovery and the Registration of one vigil; create it with NewMetrics.
type Metrics struct {
	requests     *prometheus.CounterVec   // endpoint, outcome
	latency      *prometheus.HistogramVec // endpoint, non-blocking requests
	wait         *prometheus.HistogramVec // endpoint, blocking queries
	changes      prometheus.Counter
	changeToSend prometheus.Histogram
	changeToTbl  prometheus.Histogram
	registered   prometheus.Gauge
	regStatus    *prometheus.GaugeVec
	registers    prometheus.Counter

	mu       sync.Mutex
	watchers map[*watcher]struct{}
}

// NewMetrics creates the metrics and registers them on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_consul_requests_total",
			Help: "Requests to Consul's HTTP API, by endpoint and outcome (ok, 4xx, 5xx, error, canceled).",
		}, []string{"endpoint", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vigil_consul_request_duration_seconds",
			Help:    "Duration of Consul requests that are not blocking queries, by endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"endpoint"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vigil_consul_blocking_query_wait_seconds",
			Help:    "How long blocking queries to Consul waited before they returned, by endpoint.",
			Buckets: []float64{0.01, 0.1, 1, 5, 15, 30, 60, 120, 300, 600},
		}, []string{"endpoint"}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_consul_membership_changes_total",
			Help: "Changes in an upstream's instances seen in Consul.",
		}),
		changeToSend: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_consul_change_to_discovery_seconds",
			Help:    "Time from a Consul response that carried a change to its hand-over to the discovery manager.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}),
		changeToTbl: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_consul_change_to_table_seconds",
			Help:    "Time from a Consul response that carried a change to the first table snapshot that shows it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}),
		registered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_consul_registered",
			Help: "1 while the local service is registered with the Consul agent, else 0.",
		}),
		regStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_consul_registration_status",
			Help: "The status last written to the local service's TTL check: 1 for the current one.",
		}, []string{"status"}),
		registers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_consul_registrations_total",
			Help: "Registrations of the local service with the Consul agent (re-registrations after an agent lost it included).",
		}),
		watchers: map[*watcher]struct{}{},
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.latency, m.wait, m.changes, m.changeToSend, m.changeToTbl,
			m.registered, m.regStatus, m.registers, &staleness{m})
	}
	return m
}

func (m *Metrics) setStatus(status string) {
	for _, s := range []string{"passing", "warning", "critical"} {
		v := 0.0
		if s == status {
			v = 1
		}
		m.regStatus.WithLabelValues(s).Set(v)
	}
}

func (m *Metrics) addWatcher(w *watcher) {
	m.mu.Lock()
	m.watchers[w] = struct{}{}
	m.mu.Unlock()
}

func (m *Metrics) removeWatcher(w *watcher) {
	m.mu.Lock()
	delete(m.watchers, w)
	m.mu.Unlock()
}

// staleness collects, at scrape time, each watch's seconds since its last successful sync.
type staleness struct{ m *Metrics }

var (
	stalenessDesc = prometheus.NewDesc("vigil_consul_staleness_seconds",
		"Seconds since the last successful sync of an upstream's instances with Consul; 0 while in sync.",
		[]string{"upstream", "datacenter"}, nil)
	lastSyncDesc = prometheus.NewDesc("vigil_consul_last_sync_timestamp_seconds",
		"Unix time of the last successful sync of an upstream's instances with Consul.",
		[]string{"upstream", "datacenter"}, nil)
)

func (s *staleness) Describe(ch chan<- *prometheus.Desc) {
	ch <- stalenessDesc
	ch <- lastSyncDesc
}

func (s *staleness) Collect(ch chan<- prometheus.Metric) {
	s.m.mu.Lock()
	ws := make([]*watcher, 0, len(s.m.watchers))
	for w := range s.m.watchers {
		ws = append(ws, w)
	}
	s.m.mu.Unlock()
	now := time.Now()
	seen := map[[2]string]bool{}
	for _, w := range ws {
		key := [2]string{w.upstream, w.dcLabel()}
		if seen[key] {
			continue
		}
		seen[key] = true
		st := w.staleness(now)
		ch <- prometheus.MustNewConstMetric(stalenessDesc, prometheus.GaugeValue, st.Seconds(), w.upstream, w.dcLabel())
		if t := w.lastSync(); !t.IsZero() {
			ch <- prometheus.MustNewConstMetric(lastSyncDesc, prometheus.GaugeValue,
				float64(t.UnixNano())/1e9, w.upstream, w.dcLabel())
		}
	}
}

// transport counts and times every request to Consul.
type transport struct {
	base http.RoundTripper
	m    *Metrics
}

func (t *transport) RoundTrip(r *http.Request) (*http.Response, error) {
	ep := endpoint(r.URL.Path)
	q := r.URL.Query()
	blocking := q.Get("index") != "" && q.Get("index") != "0"
	start := time.Now()
	resp, err := t.base.RoundTrip(r)
	d := time.Since(start)
	outcome := "ok"
	switch {
	case err != nil && (errors.Is(err, context.Canceled) || r.Context().Err() != nil):
		outcome = "canceled"
	case err != nil:
		outcome = "error"
	case resp.StatusCode >= 500:
		outcome = "5xx"
	case resp.StatusCode >= 400:
		outcome = "4xx"
	}
	t.m.requests.WithLabelValues(ep, outcome).Inc()
	if outcome != "canceled" {
		if blocking {
			t.m.wait.WithLabelValues(ep).Observe(d.Seconds())
		} else {
			t.m.latency.WithLabelValues(ep).Observe(d.Seconds())
		}
	}
	return resp, err
}

// endpoints are the API paths vigil uses, without their variable parts.
var endpoints = []string{
	"/v1/health/service/",
	"/v1/catalog/services",
	"/v1/agent/service/register",
	"/v1/agent/service/deregister/",
	"/v1/agent/service/",
	"/v1/agent/check/update/",
	"/v1/agent/self",
	"/v1/status/leader",
}

// endpoint names the API endpoint of path with a bounded set of values, for metric labels.
func endpoint(path string) string {
	for _, e := range endpoints {
		if strings.HasPrefix(path, e) {
			return strings.TrimSuffix(e, "/")
		}
	}
	return "other"
}
