package deployments_test

import (
	"strings"
	"testing"
	"time"
)

// verifyUnit runs `systemd-analyze verify` on a unit file and returns its findings. verify exits
// 0 on unknown keys and bad values (it only logs them), so every line it prints counts, except
// that vigil's binary is not installed where the tests run.
func verifyUnit(t *testing.T, path string) []string {
	t.Helper()
	out, _ := run(t, "systemd-analyze", "verify", path)
	var findings []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" || strings.Contains(line, "Command /usr/local/bin/vigil is not executable") {
			continue
		}
		findings = append(findings, line)
	}
	return findings
}

func TestSystemdUnit(t *testing.T) {
	for _, f := range verifyUnit(t, "vigil.service") {
		t.Error(f)
	}
	unit := read(t, "vigil.service")
	for _, want := range []string{"ExecStart=/usr/local/bin/vigil run -config /etc/vigil/vigil.yaml", "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "TimeoutStopSec=30"} {
		if !strings.Contains(unit, want+"\n") {
			t.Errorf("vigil.service lacks %s", want)
		}
	}
	// TimeoutStopSec=30 must outlast the drain of the config it ships with.
	if cfg := parseVigil(t, "vigil-consul.yaml", read(t, "vigil-consul.yaml"), nil); drainOf(t, cfg) >= 30*time.Second {
		t.Errorf("vigil-consul.yaml drains %v: more than the unit's TimeoutStopSec=30", drainOf(t, cfg))
	}
}

// TestSystemdUnitCatchesErrors proves verify's findings are read: a copy with a misspelt key and
// a bad Restart value is reported at both.
func TestSystemdUnitCatchesErrors(t *testing.T) {
	got := strings.Join(verifyUnit(t, "testdata/vigil-bad.service"), "\n")
	for _, want := range []string{"Unknown key 'TimeoutStopSecs' in section [Service]", "Failed to parse service restart specifier, ignoring: sometimes"} {
		if !strings.Contains(got, want) {
			t.Errorf("systemd-analyze verify does not report %q:\n%s", want, got)
		}
	}
}
