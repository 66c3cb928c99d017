package health

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the checker's Prometheus series.
type metrics struct {
	probes      *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	transitions *prometheus.CounterVec
	closed      *prometheus.CounterVec
	changes     *prometheus.CounterVec
	toTable     prometheus.Histogram
	inFlight    prometheus.Gauge
	instances   *prometheus.GaugeVec
	lag         prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_health_probes_total",
			Help: "Health probes by upstream and result (success or failure); passive failures included.",
		}, []string{"upstream", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vigil_health_probe_duration_seconds",
			Help:    "Duration of active health probes by upstream.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"upstream"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_health_transitions_total",
			Help: "Changes of an instance's health state, by upstream and the state changed to.",
		}, []string{"upstream", "to"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_health_connection_closed_total",
			Help: "Watched idle connections (a kept probe connection or a dedicated one) closed or reset by the instance, by upstream.",
		}, []string{"upstream"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_health_state_changes_total",
			Help: "Changes of an instance's health state by upstream and cause: probe (a scheduled probe), watch (a probe triggered by the instance closing its idle connection), passive (failures seen by a proxy), registry (the discovery source's verdict, kind none), manual, shared (the owners' verdict, shared probing).",
		}, []string{"upstream", "cause"}),
		toTable: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_health_change_to_table_seconds",
			Help:    "From the probe result that changed an instance's state to the endpoint table's new snapshot.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_health_probes_in_flight",
			Help: "Health probes in flight now.",
		}),
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_health_probed_instances",
			Help: "Instances the checker follows, by upstream.",
		}, []string{"upstream"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_health_schedule_lag_seconds",
			Help:    "How late probes start after their scheduled time.",
			Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
	}
	if reg != nil {
		reg.MustRegister(m.probes, m.duration, m.transitions, m.closed, m.changes, m.toTable, m.inFlight, m.instances, m.lag)
	}
	return m
}

// upstreamMetrics are the series of one upstream, looked up once.
type upstreamMetrics struct {
	ok, fail    prometheus.Counter
	duration    prometheus.Observer
	toHealthy   prometheus.Counter
	toUnhealthy prometheus.Counter
	closed      prometheus.Counter
	changes     [numCauses]prometheus.Counter
	instances   prometheus.Gauge
}

// cause is what triggered a change of state.
type cause uint8

const (
	causeProbe cause = iota
	causeWatch
	causePassive
	causeRegistry
	causeManual
	causeShared
	numCauses
)

var causeNames = [numCauses]string{"probe", "watch", "passive", "registry", "manual", "shared"}

func (m *metrics) upstream(name string) upstreamMetrics {
	u := upstreamMetrics{
		ok:          m.probes.WithLabelValues(name, "success"),
		fail:        m.probes.WithLabelValues(name, "failure"),
		duration:    m.duration.WithLabelValues(name),
		toHealthy:   m.transitions.WithLabelValues(name, Healthy.String()),
		toUnhealthy: m.transitions.WithLabelValues(name, Unhealthy.String()),
		closed:      m.closed.WithLabelValues(name),
		instances:   m.instances.WithLabelValues(name),
	}
	for i, c := range causeNames {
		u.changes[i] = m.changes.WithLabelValues(name, c)
	}
	return u
}

// forget deletes every series of a deleted upstream.
func (m *metrics) forget(name string) {
	l := prometheus.Labels{"upstream": name}
	m.probes.DeletePartialMatch(l)
	m.duration.DeletePartialMatch(l)
	m.transitions.DeletePartialMatch(l)
	m.closed.DeletePartialMatch(l)
	m.changes.DeletePartialMatch(l)
	m.instances.DeletePartialMatch(l)
}
