package share

import "github.com/prometheus/client_golang/prometheus"

// metrics are shared probing's Prometheus series.
type metrics struct {
	members  prometheus.Gauge
	sent     prometheus.Counter
	received prometheus.Counter
	applied  prometheus.Counter
	delay    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_share_members",
			Help: "Live vigils of this datacenter in the shared-probing gossip, this one included.",
		}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_share_verdicts_sent_total",
			Help: "Verdicts this vigil broadcast on instances it owns (changes and refreshes).",
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_share_verdicts_received_total",
			Help: "Newer verdicts received from other vigils.",
		}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_share_verdicts_applied_total",
			Help: "Changes of the owners' verdict applied to an instance's health.",
		}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_share_delay_seconds",
			Help:    "From an owner's verdict to its receipt here (the owner's clock against this one).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
	if reg != nil {
		reg.MustRegister(m.members, m.sent, m.received, m.applied, m.delay)
	}
	return m
}
