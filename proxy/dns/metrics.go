package dns

import (
	"fmt"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// qtypes and rcodes are the label values of vigil_dns_queries_total; anything else is "other".
var (
	qtypes = []uint16{mdns.TypeA, mdns.TypeAAAA, mdns.TypeSRV, mdns.TypeANY, mdns.TypeSOA, mdns.TypeNS, mdns.TypeTXT, mdns.TypePTR}
	rcodes = []int{mdns.RcodeSuccess, mdns.RcodeFormatError, mdns.RcodeServerFailure, mdns.RcodeNameError,
		mdns.RcodeNotImplemented, mdns.RcodeRefused, mdns.RcodeBadVers}
)

type metrics struct {
	// queries is indexed [qtype][rcode] by position in qtypes and rcodes, the last being "other";
	// the counters are resolved once so that counting a query is one atomic add.
	queries   [][]prometheus.Counter
	latency   prometheus.Histogram
	truncated prometheus.Counter
	forwarded prometheus.Counter
	fwdErrors prometheus.Counter
	rebuilds  prometheus.Counter
	// changeToAnswer: from a health state change to the first answer built from it.
	changeToAnswer prometheus.Histogram
	dropped        prometheus.Counter
	limited        [2]prometheus.Counter // UDP responses over the rate limit: slipped, dropped
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vigil_dns_queries_total",
		Help: "DNS queries answered, by question type and response code.",
	}, []string{"qtype", "rcode"})
	m := &metrics{
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_dns_request_duration_seconds",
			Help:    "Time from a parsed query to its response written, forwarded queries included.",
			Buckets: []float64{0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 2},
		}),
		truncated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_dns_truncated_total",
			Help: "Responses sent with the TC bit because the answer did not fit the client's buffer.",
		}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_dns_forwarded_total",
			Help: "Queries for names outside vigil's domains sent to a recursor.",
		}),
		fwdErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_dns_forward_errors_total",
			Help: "Failed exchanges with a recursor (each failed recursor of a query counts).",
		}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_dns_index_rebuilds_total",
			Help: "Answer indexes rebuilt from a new table snapshot.",
		}),
		changeToAnswer: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_dns_change_to_answer_seconds",
			Help:    "From the probe result that changed an instance's health state to the first DNS answer built from a table snapshot that holds it.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_dns_dropped_total",
			Help: "UDP queries dropped unanswered because 1024 others were already being forwarded or unpacked.",
		}),
	}
	limited := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vigil_dns_rate_limited_total",
		Help: "UDP queries over dns.rate_limit, by action: slip (answered empty and truncated) or drop.",
	}, []string{"action"})
	m.limited = [2]prometheus.Counter{limited.WithLabelValues("slip"), limited.WithLabelValues("drop")}
	m.queries = make([][]prometheus.Counter, len(qtypes)+1)
	for i := range m.queries {
		qt := "other"
		if i < len(qtypes) {
			qt = mdns.TypeToString[qtypes[i]]
		}
		m.queries[i] = make([]prometheus.Counter, len(rcodes)+1)
		for j := range m.queries[i] {
			rc := "other"
			switch {
			case j < len(rcodes) && rcodes[j] == mdns.RcodeBadVers:
				rc = "BADVERS" // 16 is BADSIG in a TSIG record, but only BADVERS in a header+OPT rcode
			case j < len(rcodes):
				rc = mdns.RcodeToString[rcodes[j]]
			}
			m.queries[i][j] = queries.WithLabelValues(qt, rc)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{queries, m.latency, m.truncated, m.forwarded, m.fwdErrors, m.rebuilds, m.changeToAnswer, m.dropped, limited} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("dns: metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *metrics) count(qtype uint16, rcode int) {
	i, j := len(qtypes), len(rcodes)
	for k, t := range qtypes {
		if t == qtype {
			i = k
			break
		}
	}
	for k, c := range rcodes {
		if c == rcode {
			j = k
			break
		}
	}
	m.queries[i][j].Inc()
}
