package health

import (
	"strings"
	"testing"
	"time"
)

// run feeds a sequence of results ('+' pass, '-' fail, one per step of the clock) and returns the
// effective states after each, as a string of 'H', 'U' and (for held unhealthy by flapping) 'F'.
func runMachine(th thresholds, seq string, step time.Duration) string {
	var m machine
	now := time.Unix(1000, 0)
	var out strings.Builder
	for _, r := range seq {
		if r == ' ' {
			continue
		}
		m.Observe(now, r == '+', th)
		switch {
		case m.Flapping():
			out.WriteByte('F')
		case m.State() == Healthy:
			out.WriteByte('H')
		default:
			out.WriteByte('U')
		}
		now = now.Add(step)
	}
	return out.String()
}

func TestMachineThresholds(t *testing.T) {
	for _, tc := range []struct {
		name               string
		healthy, unhealthy int
		seq, want          string
	}{
		{"first pass decides", 3, 3, "+", "H"},
		{"first failure decides", 3, 3, "-", "U"},
		{"fall after two", 2, 2, "++--", "HHHU"},
		{"rise after two", 2, 2, "--++", "UUUH"},
		{"fall interrupted", 2, 2, "+-+-+--", "HHHHHHU"},
		{"rise interrupted", 2, 2, "-+-+-++", "UUUUUUH"},
		{"thresholds of one", 1, 1, "+-+-", "HUHU"},
		{"rise three fall one", 3, 1, "-++++-", "UUUHHU"},
		{"long run", 2, 3, "+---+--++", "HHHUUUUUH"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := thresholds{Healthy: tc.healthy, Unhealthy: tc.unhealthy}
			if got := runMachine(th, tc.seq, time.Second); got != tc.want {
				t.Errorf("%s: got %s, want %s", tc.seq, got, tc.want)
			}
		})
	}
}

func TestMachineFlapDamping(t *testing.T) {
	flap := FlapConfig{Threshold: 3, Window: 10 * time.Second, HoldDown: 5 * time.Second}
	th := thresholds{Healthy: 1, Unhealthy: 1, Flap: flap}
	for _, tc := range []struct {
		name      string
		th        thresholds
		step      time.Duration
		seq, want string
	}{
		// Changes: - (first verdict, not counted) then + - + are 3 changes: not more than 3.
		{"at threshold not flapping", th, time.Second, "-+-+", "UHUH"},
		// A 4th change within the window: held down.
		{"over threshold flaps", th, time.Second, "-+-+-", "UHUHF"},
		// Held while passing until stable for 5 s after the last change (the first pass, at 5 s), then served.
		{"hold down then served", th, time.Second, "-+-+- +++++ ++", "UHUHF FFFFF HH"},
		// A change during the hold-down restarts it: the last change is at 8 s, served at 13 s.
		{"change restarts hold", th, time.Second, "-+-+- ++-++ +++ +", "UHUHF FFFFF FFF H"},
		// Changes spread wider than the window never flap.
		{"slow changes", th, 4 * time.Second, "-+-+-+-+", "UHUHUHUH"},
		// Off when threshold is 0.
		{"off", thresholds{Healthy: 1, Unhealthy: 1}, time.Second, "-+-+-+-+", "UHUHUHUH"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := runMachine(tc.th, tc.seq, tc.step), strings.ReplaceAll(tc.want, " ", ""); got != want {
				t.Errorf("%s: got %s, want %s", tc.seq, got, want)
			}
		})
	}
}
