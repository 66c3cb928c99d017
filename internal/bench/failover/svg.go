package failover

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteSVG draws a timeline of one path: per backend kind, requests per second answered by each
// instance, failed requests per second, and each kill (red), hang (purple) and revival (green).
func (r *Result) WriteSVG(w io.Writer, path string) {
	const (
		width, left, right = 1000, 50, 130
		panelH, gap, top   = 130, 36, 34
		bin                = 500 * time.Millisecond
	)
	var panels []*series
	for _, s := range r.Series {
		if s.path == path {
			panels = append(panels, s)
		}
	}
	height := top + len(panels)*(panelH+gap) + 10
	plotW := float64(width - left - right)
	x := func(d time.Duration) float64 { return float64(left) + plotW*float64(d)/float64(r.Duration) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%d" y="18" font-size="14" font-weight="bold">%s: requests/s per instance, failed requests/s (red); kill (red line), hang (purple dashed), revival (green)</text>`+"\n", left, path)
	colors := []string{"#1f77b4", "#2ca02c", "#ff7f0e"}
	nbins := int(r.Duration/bin) + 1
	for pi, s := range panels {
		y0 := float64(top + pi*(panelH+gap) + 14)
		yMax := float64(r.Rate)
		y := func(v float64) float64 { return y0 + float64(panelH) - float64(panelH)*min(v, yMax)/yMax }
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" font-weight="bold">%s</text>`+"\n", left, y0-4, s.kind)
		fmt.Fprintf(&b, `<rect x="%d" y="%.0f" width="%.0f" height="%d" fill="none" stroke="#999"/>`+"\n", left, y0, plotW, panelH)
		for _, v := range []float64{0, yMax / 2, yMax} {
			fmt.Fprintf(&b, `<text x="%d" y="%.0f" text-anchor="end">%.0f</text>`+"\n", left-4, y(v)+4, v)
		}
		for t := time.Duration(0); t <= r.Duration; t += 30 * time.Second {
			fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle" fill="#666">%ds</text>`+"\n", x(t), y0+float64(panelH)+12, int(t.Seconds()))
		}
		counts := make([][]float64, 4) // instances 0-2, failures
		for i := range counts {
			counts[i] = make([]float64, nbins)
		}
		s.mu.Lock()
		for _, rec := range s.recs {
			bi := int(rec.at / bin)
			switch {
			case bi >= nbins:
			case rec.failed:
				counts[3][bi]++
			case rec.sent >= 0 && rec.sent < 3:
				counts[rec.sent][bi]++
			}
		}
		s.mu.Unlock()
		for _, ev := range r.Events[s.kind] {
			color, dash := "#d62728", ""
			if ev.Hang {
				color, dash = "#9467bd", ` stroke-dasharray="4,3"`
			}
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="%s"%s/>`, x(ev.At), y0, x(ev.At), y0+float64(panelH), color, dash)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#2ca02c"/>`+"\n", x(ev.Back), y0+float64(panelH)*0.7, x(ev.Back), y0+float64(panelH))
		}
		perSec := float64(time.Second / bin)
		for i, c := range counts {
			color := "#d62728"
			label := "failed"
			if i < 3 {
				color, label = colors[i], fmt.Sprintf("instance %d", i)
			}
			var pts strings.Builder
			for bi, n := range c {
				fmt.Fprintf(&pts, "%.0f,%.0f ", x(time.Duration(bi)*bin+bin/2), y(n*perSec))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.2" points="%s"/>`+"\n", color, strings.TrimSpace(pts.String()))
			fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="%s">%s</text>`+"\n", float64(width-right+8), y0+14+float64(i)*14, color, label)
		}
	}
	b.WriteString("</svg>\n")
	_, _ = io.WriteString(w, b.String())
}
