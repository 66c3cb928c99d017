package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vigil-sidecar/vigil/proxy/admin"
)

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9480", "admin address of the running vigil")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var tab admin.Table
	if err := getJSON(ctx, "http://"+*addr+"/v1/upstreams", &tab); err != nil {
		fmt.Fprintf(stderr, "vigil: status: %v\n", err)
		return 1
	}
	if name := fs.Arg(0); name != "" {
		var keep []admin.Upstream
		for _, u := range tab.Upstreams {
			if u.Name == name {
				keep = append(keep, u)
			}
		}
		if len(keep) == 0 {
			fmt.Fprintf(stderr, "vigil: status: no upstream %q\n", name)
			return 1
		}
		tab.Upstreams = keep
	}
	printStatus(stdout, &tab, time.Now())
	return 0
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func printStatus(w io.Writer, tab *admin.Table, now time.Time) {
	ready := "not ready"
	if tab.Ready {
		ready = "ready"
	}
	fmt.Fprintf(w, "table version %d, %s\n\n", tab.Version, ready)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tINSTANCE\tZONE\tSTATE\tSERVED\tPRIO\tLATENCY\tFOR\tREASON")
	for _, u := range tab.Upstreams {
		flags := ""
		if u.Panic {
			flags += " PANIC"
		}
		if u.Failover > 0 {
			flags += fmt.Sprintf(" FAILOVER=%d", u.Failover)
		}
		fmt.Fprintf(tw, "%s\t%d/%d healthy, %d served%s\t\t\t\t\t\t\t\n", u.Name, u.Healthy, u.Total, u.Served, flags)
		for _, in := range u.Instances {
			served := "-"
			if in.Served {
				served = "yes"
			}
			since := "-"
			if !in.Since.IsZero() {
				since = now.Sub(in.Since).Round(time.Second).String()
			}
			reason := in.Reason
			if in.Flapping {
				reason = "flapping: " + reason
			}
			fmt.Fprintf(tw, "\t%s\t%s\t%s\t%s\t%d\t%.1fms\t%s\t%s\n", in.ID, orDash(in.Zone), strings.ToUpper(in.State),
				served, in.Priority, in.Probe.LatencyMS, since, reason)
		}
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
