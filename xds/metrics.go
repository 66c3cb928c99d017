package xds

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the xDS server's Prometheus metrics.
type metrics struct {
	streams   *prometheus.GaugeVec   // api (sotw|delta), service (ads|cds|eds|lds|rds)
	pushes    prometheus.Counter     // coalesced pushes into the caches
	resources *prometheus.CounterVec // resources sent to clients, by type
	bytes     *prometheus.CounterVec // response bytes sent to clients, by type
	responses *prometheus.CounterVec // responses sent to clients, by api and type
	nacks     *prometheus.CounterVec // rejected responses, by type
	latency   prometheus.Histogram   // first table change to push
	// changeToAck: health state change to its acknowledgement by each client.
	changeToAck prometheus.Histogram
	version     prometheus.Gauge       // version epoch
	upstreams   prometheus.Gauge       // upstreams served
	rejected    *prometheus.CounterVec // connections and streams refused by xds.limits, by what
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_xds_streams",
			Help: "Connected xDS streams, by API variant (sotw, delta) and service (ads, cds, eds, lds, rds).",
		}, []string{"api", "service"}),
		pushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_xds_pushes_total",
			Help: "Coalesced table changes pushed into the xDS caches.",
		}),
		resources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_xds_resources_pushed_total",
			Help: "Resources sent to xDS clients, by resource type.",
		}, []string{"type"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_xds_pushed_bytes_total",
			Help: "Bytes of xDS responses sent to clients (protobuf size), by resource type.",
		}, []string{"type"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_xds_responses_total",
			Help: "xDS responses sent to clients, by API variant and resource type.",
		}, []string{"api", "type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_xds_nacks_total",
			Help: "xDS responses rejected by clients (NACKs), by resource type.",
		}, []string{"type"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_xds_push_latency_seconds",
			Help:    "Time from a table change to its push into the xDS caches, coalescing included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		changeToAck: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_xds_change_to_ack_seconds",
			Help:    "From the probe result that changed an instance's health state to each xDS client's acknowledgement (ACK) of the first response that carries it.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		version: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_xds_version_epoch",
			Help: "The version epoch of this run: the prefix of every xDS version it serves.",
		}),
		upstreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_xds_upstreams",
			Help: "Upstreams served as clusters over xDS.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_xds_rejected_total",
			Help: "Connections closed at accept and streams refused because of xds.limits, by what (connection, stream).",
		}, []string{"what"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.streams, m.pushes, m.resources, m.bytes, m.responses, m.nacks, m.latency, m.changeToAck, m.version, m.upstreams, m.rejected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("xds: register metrics: %w", err)
		}
	}
	return m, nil
}
