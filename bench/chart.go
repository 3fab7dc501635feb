package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// latencyChart draws the latency CDFs of the stream and sweep-only, at
// 500 events/s (solid) and the highest rate (dashed), on a log-scale
// millisecond axis: an SVG written by hand, no plotting library.
func latencyChart(r *results) string {
	const (
		width, plotH       = 820, 380
		left, right, top   = 70, 30, 50
		plotW              = width - left - right
		axisBelow, lineGap = 48, 18
	)
	type curve struct {
		label, color, dash string
		d                  distribution
	}
	colors := map[string]string{streamMode.Name: "#1f77b4", sweepMode.Name: "#ff7f0e"}
	rates := []int{500}
	if n := len(r.Plan.LatencyRates); n > 0 && r.Plan.LatencyRates[n-1] != 500 {
		rates = append(rates, r.Plan.LatencyRates[n-1])
	}
	var curves []curve
	var missing []string
	for _, rate := range rates {
		for _, m := range modes() {
			l := r.latencyOf(m.Name, rate)
			if l == nil {
				if rate == 500 {
					missing = append(missing, m.Name)
				}
				continue
			}
			dash := ""
			if rate != 500 {
				dash = "6 4"
			}
			curves = append(curves, curve{
				label: fmt.Sprintf("%s, %s events/s — p50 %s ms, p99 %s ms", m.Name, thousands(rate), l.Latency.cell(l.Latency.P50), l.Latency.cell(l.Latency.P99)),
				color: colors[m.Name], dash: dash, d: l.Latency,
			})
		}
	}

	// The legend goes under the x axis label.
	legendTop := top + plotH + axisBelow + 10
	height := legendTop + lineGap*(len(curves)+len(missing)) + 10

	// The x axis spans whole decades around the data: 0.1 ms at least.
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, c := range curves {
		for _, v := range c.d.CDF {
			if v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 1, 1000
	}
	dLo := math.Floor(math.Log10(math.Max(lo, 0.1)))
	dHi := math.Max(math.Ceil(math.Log10(hi)), dLo+1)
	x := func(ms float64) float64 {
		ms = math.Max(ms, math.Pow(10, dLo))
		return left + (math.Log10(ms)-dLo)/(dHi-dLo)*plotW
	}
	y := func(pct float64) float64 { return top + plotH - pct/100*plotH }

	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	w(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	w(`<text x="%d" y="24" font-size="15" font-weight="bold">Commit → runner receipt latency (CDF)</text>`+"\n", left)
	w(`<text x="%d" y="40" fill="#555">share of events delivered within x ms; single-row transactions, %s per rate</text>`+"\n", left, html.EscapeString(r.Plan.LatencyDuration.String()))

	// Grid and axes.
	for d := dLo; d <= dHi; d++ {
		for k := 1; k <= 9; k++ {
			v := float64(k) * math.Pow(10, d)
			if math.Log10(v) > dHi+1e-9 {
				break
			}
			px := x(v)
			stroke := "#eee"
			if k == 1 {
				stroke = "#ccc"
				w(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", px, top+plotH+18, msLabel(v))
			}
			w(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>`+"\n", px, top, px, top+plotH, stroke)
		}
	}
	for pct := 0; pct <= 100; pct += 10 {
		py := y(float64(pct))
		w(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>`+"\n", left, py, left+plotW, py)
		w(`<text x="%d" y="%.1f" text-anchor="end">%d%%</text>`+"\n", left-8, py+4, pct)
	}
	w(`<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", left, top, plotW, plotH)
	w(`<text x="%d" y="%d" text-anchor="middle">latency, ms (log scale)</text>`+"\n", left+plotW/2, top+plotH+38)
	w(`<text transform="translate(18 %d) rotate(-90)" text-anchor="middle">events delivered</text>`+"\n", top+plotH/2)

	// Curves: a step through the quantile grid.
	for _, c := range curves {
		var pts []string
		for i, v := range c.d.CDF {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(v), y(cdfGrid[i])))
		}
		dash := ""
		if c.dash != "" {
			dash = fmt.Sprintf(` stroke-dasharray="%s"`, c.dash)
		}
		w(`<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", c.color, dash, strings.Join(pts, " "))
	}

	// Legend.
	for i, c := range curves {
		yy := legendTop + lineGap*i
		dash := ""
		if c.dash != "" {
			dash = fmt.Sprintf(` stroke-dasharray="%s"`, c.dash)
		}
		w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", left, yy, left+28, yy, c.color, dash)
		w(`<text x="%d" y="%d">%s</text>`+"\n", left+34, yy+4, html.EscapeString(c.label))
	}
	for i, m := range missing {
		yy := legendTop + lineGap*(len(curves)+i)
		w(`<text x="%d" y="%d" fill="#a00">%s at 500 events/s: not measured (stream not available)</text>`+"\n", left, yy+4, html.EscapeString(m))
	}
	w("</svg>\n")
	return b.String()
}

func msLabel(v float64) string {
	switch {
	case v < 1:
		return fmt.Sprintf("%g", v)
	case v < 1000:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.0f s", v/1000)
	}
}
