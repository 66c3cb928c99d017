package forward

import "github.com/prometheus/client_golang/prometheus"

// metrics are the forwarder's series, all by upstream.
type metrics struct {
	active   *prometheus.GaugeVec
	total    *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	failures *prometheus.CounterVec
	retries  *prometheus.CounterVec
	ejected  *prometheus.CounterVec
	drained  *prometheus.CounterVec
	refused  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vigil_forward_connections_active",
			Help: "Client connections open through the forwarder."}, []string{"upstream"}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_forward_connections_total",
			Help: "Client connections accepted by the forwarder (refused ones included)."}, []string{"upstream"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_forward_bytes_total",
			Help: "Bytes forwarded, by direction: to_upstream (client to instance) or to_client."}, []string{"upstream", "direction"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_forward_connect_failures_total",
			Help: "Failed connects to an instance, by reason: refused, reset, timeout, unreachable, other."}, []string{"upstream", "reason"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_forward_retries_total",
			Help: "Connect attempts made after a failed one, on another instance."}, []string{"upstream"}),
		ejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_forward_passive_ejections_total",
			Help: "Instances made unhealthy by connect failures (passive outlier detection)."}, []string{"upstream"}),
		drained: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_forward_drained_connections_total",
			Help: "Connections closed at the end of a drain (instance left the served set, or shutdown)."}, []string{"upstream"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vigil_forward_refused_connections_total",
			Help: "Client connections closed at once: the listener was at max_connections, or no instance could be reached."}, []string{"upstream", "reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.active, m.total, m.bytes, m.failures, m.retries, m.ejected, m.drained, m.refused)
	}
	return m
}
