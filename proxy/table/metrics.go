package table

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector reports the current snapshot at scrape time, so that removed upstreams leave no series.
type collector struct {
	t                              *Table
	version, instances, panic, age *prometheus.Desc
	served                         *prometheus.Desc
}

// Register registers the table's metrics on reg.
func (t *Table) Register(reg prometheus.Registerer) error {
	return reg.Register(&collector{
		t:         t,
		version:   prometheus.NewDesc("vigil_table_version", "Version of the current endpoint table snapshot.", nil, nil),
		instances: prometheus.NewDesc("vigil_table_instances", "Instances by upstream and state.", []string{"upstream", "state"}, nil),
		served:    prometheus.NewDesc("vigil_table_served_instances", "Instances that traffic may go to, by upstream.", []string{"upstream"}, nil),
		panic:     prometheus.NewDesc("vigil_table_panic", "1 while the upstream is in panic mode (healthy share below its panic threshold).", []string{"upstream"}, nil),
		age:       prometheus.NewDesc("vigil_table_failover_level", "Failover level in use: 0 for the local datacenter, n for the n-th fallback.", []string{"upstream"}, nil),
	})
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.version
	ch <- c.instances
	ch <- c.served
	ch <- c.panic
	ch <- c.age
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.t.Snapshot()
	ch <- prometheus.MustNewConstMetric(c.version, prometheus.GaugeValue, float64(s.Version))
	for _, name := range s.Names {
		u := s.Upstreams[name]
		var counts [4]int
		for i := range u.Instances {
			counts[u.Instances[i].State]++
		}
		for _, st := range States {
			ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(counts[st]), name, st.String())
		}
		ch <- prometheus.MustNewConstMetric(c.served, prometheus.GaugeValue, float64(len(u.Served)), name)
		p := 0.0
		if u.Panic {
			p = 1
		}
		ch <- prometheus.MustNewConstMetric(c.panic, prometheus.GaugeValue, p, name)
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, float64(u.Failover), name)
	}
}
