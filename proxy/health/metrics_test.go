package health_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

func exposition(t *testing.T, reg *prometheus.Registry) string {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func gatherMatching(t *testing.T, reg *prometheus.Registry, s string) int {
	n := 0
	for _, line := range strings.Split(exposition(t, reg), "\n") {
		if !strings.HasPrefix(line, "#") && strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// promtoolCheck validates the exposition with the real promtool.
func promtoolCheck(t *testing.T, reg *prometheus.Registry) {
	testutil.CheckMetrics(t, exposition(t, reg))
}
