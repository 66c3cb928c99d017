package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vigil-sidecar/vigil/proxy/admin"
)

// notFound is a NAME that names no upstream and no instance.
type notFound struct{ name string }

func (e *notFound) Error() string { return fmt.Sprintf("no upstream or instance %q", e.name) }

// instanceJSON is one instance with its upstream (vigil status -o json INSTANCE).
type instanceJSON struct {
	Upstream string `json:"upstream"`
	admin.Instance
}

// renderStatus renders tab, narrowed to o.name, as o.output.
func renderStatus(tab *admin.Table, o *statusOpts) ([]byte, error) {
	now := tab.Now
	if now.IsZero() {
		now = time.Now()
	}
	var buf bytes.Buffer
	p := painter(o.color)
	if o.name == "" {
		if o.output == "json" {
			return marshal(tab, o.watch)
		}
		printStatus(&buf, tab, now, p)
		return buf.Bytes(), nil
	}
	for _, u := range tab.Upstreams {
		if u.Name != o.name {
			continue
		}
		if o.output == "json" {
			return marshal(u, o.watch)
		}
		one := *tab
		one.Upstreams = []admin.Upstream{u}
		printStatus(&buf, &one, now, p)
		var ts []admin.Transition
		for _, in := range u.Instances {
			ts = append(ts, in.Transitions...)
		}
		slices.SortStableFunc(ts, func(a, b admin.Transition) int { return a.At.Compare(b.At) })
		fmt.Fprintf(&buf, "\nrecent transitions of %s\n", u.Name)
		printTransitions(&buf, ts, true, p)
		return buf.Bytes(), nil
	}
	up, id, qualified := strings.Cut(o.name, "/")
	if !qualified {
		up, id = "", o.name
	}
	for _, u := range tab.Upstreams {
		if up != "" && u.Name != up {
			continue
		}
		for _, in := range u.Instances {
			if in.ID != id {
				continue
			}
			if o.output == "json" {
				return marshal(instanceJSON{Upstream: u.Name, Instance: in}, o.watch)
			}
			printInstance(&buf, u, in, now, p)
			return buf.Bytes(), nil
		}
	}
	return nil, &notFound{o.name}
}

// marshal indents v, or writes it on one line when watching (one JSON document a line).
func marshal(v any, oneLine bool) ([]byte, error) {
	var b []byte
	var err error
	if oneLine {
		b, err = json.Marshal(v)
	} else {
		b, err = json.MarshalIndent(v, "", "  ")
	}
	return append(b, '\n'), err
}

// painter returns a function that colours text with an SGR code of two digits. Every painted
// cell has the same number of invisible bytes, so that tabwriter's columns still line up.
func painter(on bool) func(code, s string) string {
	if !on {
		return func(_, s string) string { return s }
	}
	return func(code, s string) string { return "\x1b[" + code + "m" + s + "\x1b[0m" }
}

// SGR codes of two digits: the same width for every cell.
const (
	sgrPlain = "39"
	sgrBold  = "01"
	sgrRed   = "31"
	sgrGreen = "32"
	sgrAmber = "33"
)

func stateColor(state string) string {
	switch state {
	case "healthy":
		return sgrGreen
	case "unhealthy", "removed":
		return sgrRed
	case "draining", "unknown":
		return sgrAmber
	}
	return sgrPlain
}

func printStatus(w io.Writer, tab *admin.Table, now time.Time, p func(code, s string) string) {
	ready := "not ready"
	if tab.Ready {
		ready = "ready"
	}
	fmt.Fprintf(w, "table version %d, %s\n\n", tab.Version, ready)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\t%s\tZONE\tDC\t%s\tSERVED\tPRIO\tLATENCY\tRECENT\tFOR\tREASON\n",
		p(sgrPlain, "UPSTREAM"), p(sgrPlain, "INSTANCE"), p(sgrPlain, "STATE"))
	for _, u := range tab.Upstreams {
		summary := fmt.Sprintf("%d/%d healthy, %d served", u.Healthy, u.Total, u.Served)
		color := sgrPlain
		if u.Panic {
			summary += ", PANIC"
			color = sgrRed
		}
		if u.Failover > 0 {
			summary += fmt.Sprintf(", failover %d", u.Failover)
		}
		if u.StalenessSeconds != nil {
			summary += fmt.Sprintf(", Consul view %s old", (time.Duration(*u.StalenessSeconds) * time.Second).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t\t\t%s\t\t\t\t\t\t\n", p(sgrBold, u.Name), p(color, summary), p(sgrPlain, ""))
		for _, in := range u.Instances {
			served := "-"
			if in.Served {
				served = "yes"
			}
			reason := in.Reason
			if in.Flapping {
				reason = "flapping: " + reason
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", p(sgrPlain, ""), p(sgrPlain, in.ID),
				orDash(in.Zone), orDash(in.Datacenter), p(stateColor(in.State), strings.ToUpper(in.State)),
				served, in.Priority, latency(in), sparkline(in.Samples), since(now, in.Since), reason)
		}
	}
	tw.Flush()
}

func printInstance(w io.Writer, u admin.Upstream, in admin.Instance, now time.Time, p func(code, s string) string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	served := "no"
	if in.Served {
		served = fmt.Sprintf("yes, priority %d", in.Priority)
	}
	rows := [][2]string{
		{"instance", u.Name + "/" + in.ID},
		{"address", fmt.Sprintf("%s:%d", in.Address, in.Port)},
		{"zone", orDash(in.Zone)},
		{"datacenter", orDash(in.Datacenter)},
		{"state", p(stateColor(in.State), strings.ToUpper(in.State)) + " for " + since(now, in.Since)},
		{"reason", orDash(in.Reason)},
		{"served", served},
		{"last probe", latency(in) + ", " + orDash(in.Probe.LastError)},
		{"probes", fmt.Sprintf("%d, %d failed", in.Probe.Probes, in.Probe.Failures)},
		{"recent", orDash(sparkline(in.Samples))},
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	tw.Flush()
	fmt.Fprintln(w, "\nrecent transitions")
	printTransitions(w, in.Transitions, false, p)
}

func printTransitions(w io.Writer, ts []admin.Transition, withID bool, p func(code, s string) string) {
	if len(ts) == 0 {
		fmt.Fprintln(w, "  none recorded")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, t := range ts {
		id := ""
		if withID {
			id = t.ID + "\t"
		}
		fmt.Fprintf(tw, "  %s\t%s%s\t%s\t%s\n", t.At.Local().Format("15:04:05.000"), id, orDash(strings.ToUpper(t.From)),
			p(stateColor(t.To), "-> "+strings.ToUpper(t.To)), t.Cause)
	}
	tw.Flush()
}

func latency(in admin.Instance) string {
	if in.Probe.Probes == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", in.Probe.LatencyMS)
}

func since(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return max(0, now.Sub(t)).Round(time.Second).String()
}

// sparkline draws recent probe latencies with block characters; a failed probe is an x.
func sparkline(samples []admin.Sample) string {
	if len(samples) == 0 {
		return ""
	}
	const bars = "▁▂▃▄▅▆▇█"
	top := slices.MaxFunc(samples, func(a, b admin.Sample) int { return cmp.Compare(a.LatencyMS, b.LatencyMS) }).LatencyMS
	var b strings.Builder
	for _, s := range samples[max(0, len(samples)-12):] {
		if s.Error != "" {
			b.WriteByte('x')
			continue
		}
		i := 0
		if top > 0 {
			i = min(7, int(s.LatencyMS/top*7.999))
		}
		b.WriteRune([]rune(bars)[i])
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
