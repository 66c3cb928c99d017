package failover

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// Outcome is what one path did around one event.
type Outcome struct {
	Leave     time.Duration // from the signal until the last request offered the instance
	Left      bool          // false: still offered when it was revived (Leave is then a floor)
	Failed    int           // failed requests from the signal to the kind's next event
	Return    time.Duration // from the revival until the first request offered it again
	Returned  bool          // false: not offered again before the next event
	FailedBad int           // of Failed, those sent to another instance than the dead one
}

// outcome measures s around ev. A request "offers" the instance when the path could have sent it
// there: a DNS answer that holds its address; for a path that picks itself, the instance it used
// (for an unattributed path, a failed request whose instance is unknown is counted as sent to the
// event's instance: the other two answer).
func outcome(s *series, ev Event) Outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	bit := uint8(1) << ev.Inst
	var o Outcome
	o.Left = true
	for _, r := range s.recs {
		switch {
		case r.at < ev.At || r.at >= ev.End:
			continue
		case r.failed:
			o.Failed++
			if int(r.sent) != ev.Inst && !(s.unattributed && r.sent < 0) {
				o.FailedBad++
			}
		}
		blind := s.unattributed && r.failed && r.sent < 0 // counted as sent to the dead instance
		if r.at < ev.Back && (r.offered&bit != 0 || blind) {
			o.Leave = r.at - ev.At
			if r.at > ev.Back-100*time.Millisecond {
				o.Left = false
			}
		}
		if r.at >= ev.Back && !o.Returned && r.offered&bit != 0 && !r.failed {
			o.Return, o.Returned = r.at-ev.Back, true
		}
	}
	return o
}

// Row is one line of the report: a path, a kind, SIGKILL or SIGSTOP.
type Row struct {
	Path        string
	Kind        Kind
	Hang        bool
	N           int
	Leave       [3]time.Duration // median, p90, max
	NotLeft     int
	FailedPer   float64
	OthersPer   float64          // of FailedPer, requests to another instance or to none
	Return      [2]time.Duration // median, p90
	NotReturned int
}

// Rows summarizes r by path, kind and event type.
func (r *Result) Rows() []Row {
	var rows []Row
	for _, s := range r.Series {
		for _, hang := range []bool{false, true} {
			row := Row{Path: s.path, Kind: s.kind, Hang: hang}
			var leave, back []time.Duration
			failed, others := 0, 0
			for _, ev := range r.Events[s.kind] {
				if ev.Hang != hang {
					continue
				}
				o := outcome(s, ev)
				row.N++
				leave = append(leave, o.Leave)
				if !o.Left {
					row.NotLeft++
				}
				failed += o.Failed
				others += o.FailedBad
				if o.Returned {
					back = append(back, o.Return)
				} else {
					row.NotReturned++
				}
			}
			if row.N == 0 {
				continue
			}
			row.Leave = [3]time.Duration{quantile(leave, .5), quantile(leave, .9), quantile(leave, 1)}
			row.Return = [2]time.Duration{quantile(back, .5), quantile(back, .9)}
			row.FailedPer = float64(failed) / float64(row.N)
			row.OthersPer = float64(others) / float64(row.N)
			rows = append(rows, row)
		}
	}
	return rows
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// WriteMarkdown writes the rows as a Markdown table.
func (r *Result) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "| path | backend | event | n | leaves traffic p50 / p90 / max | failed requests per event (to others) | revived gets traffic p50 / p90 |\n")
	fmt.Fprintf(w, "|---|---|---|--:|--:|--:|--:|\n")
	for _, row := range r.Rows() {
		ev := "SIGKILL"
		if row.Hang {
			ev = "SIGSTOP"
		}
		leave := fmt.Sprintf("%s / %s / %s", ms(row.Leave[0]), ms(row.Leave[1]), ms(row.Leave[2]))
		if row.NotLeft > 0 {
			leave += fmt.Sprintf(" (%d never left)", row.NotLeft)
		}
		back := fmt.Sprintf("%s / %s", ms(row.Return[0]), ms(row.Return[1]))
		if row.NotReturned > 0 {
			back += fmt.Sprintf(" (%d not back)", row.NotReturned)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %s | %.1f (%.1f) | %s |\n", row.Path, row.Kind, ev, row.N, leave, row.FailedPer, row.OthersPer, back)
	}
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

// WriteEvents writes every event's outcome on every path, for a closer look.
func (r *Result) WriteEvents(w io.Writer) {
	for _, s := range r.Series {
		for _, ev := range r.Events[s.kind] {
			o := outcome(s, ev)
			sig := "KILL"
			if ev.Hang {
				sig = "STOP"
			}
			fmt.Fprintf(w, "%-22s %-20s %s at %7.3fs inst %d: leave %s (left %v) failed %d (others %d) back %s (%v)\n",
				s.path, s.kind, sig, ev.At.Seconds(), ev.Inst, ms(o.Leave), o.Left, o.Failed, o.FailedBad, ms(o.Return), o.Returned)
		}
	}
}
