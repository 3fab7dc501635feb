package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// The chart's geometry in pixels: the plot area sits left/top inside the
// picture, the x axis label below it, the legend lines under that.
const (
	chartWidth, chartPlotH          = 820, 380
	chartLeft, chartRight, chartTop = 70, 30, 50
	chartPlotW                      = chartWidth - chartLeft - chartRight
	chartAxisBelow, chartLineGap    = 48, 18
	chartLegendTop                  = chartTop + chartPlotH + chartAxisBelow + 10
)

// curve is one latency CDF on the chart.
type curve struct {
	label, color, dash string
	d                  distribution
}

// chart is the SVG being drawn, with its x axis: whole decades from
// 10^dLo to 10^dHi ms.
type chart struct {
	strings.Builder
	dLo, dHi float64
}

func (c *chart) w(format string, args ...any) { fmt.Fprintf(c, format, args...) }

func (c *chart) x(ms float64) float64 {
	ms = math.Max(ms, math.Pow(10, c.dLo))
	return chartLeft + (math.Log10(ms)-c.dLo)/(c.dHi-c.dLo)*chartPlotW
}

func (c *chart) y(pct float64) float64 { return chartTop + chartPlotH - pct/100*chartPlotH }

// latencyChart draws the latency CDFs of the stream and sweep-only, at
// 500 events/s (solid) and the highest rate (dashed), on a log-scale
// millisecond axis: an SVG written by hand, no plotting library.
func latencyChart(r *results) string {
	curves, missing := chartCurves(r)
	// The legend goes under the x axis label.
	height := chartLegendTop + chartLineGap*(len(curves)+len(missing)) + 10
	c := &chart{}
	c.dLo, c.dHi = decades(curves)
	c.w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", chartWidth, height, chartWidth, height)
	c.w(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	c.w(`<text x="%d" y="24" font-size="15" font-weight="bold">Commit → runner receipt latency (CDF)</text>`+"\n", chartLeft)
	c.w(`<text x="%d" y="40" fill="#555">share of events delivered within x ms; single-row transactions, %s per rate</text>`+"\n", chartLeft, html.EscapeString(r.Plan.LatencyDuration.String()))
	c.drawAxes()
	c.drawCurves(curves)
	c.drawLegend(curves, missing)
	c.w("</svg>\n")
	return c.String()
}

// chartCurves are the CDFs to draw, and the modes not measured at 500
// events/s, for the legend to say so.
func chartCurves(r *results) (curves []curve, missing []string) {
	colors := map[string]string{streamMode.Name: "#1f77b4", sweepMode.Name: "#ff7f0e"}
	rates := []int{500}
	if n := len(r.Plan.LatencyRates); n > 0 && r.Plan.LatencyRates[n-1] != 500 {
		rates = append(rates, r.Plan.LatencyRates[n-1])
	}
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
	return curves, missing
}

// decades is the x axis: whole decades around the data, 0.1 ms at least.
func decades(curves []curve) (dLo, dHi float64) {
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
	dLo = math.Floor(math.Log10(math.Max(lo, 0.1)))
	return dLo, math.Max(math.Ceil(math.Log10(hi)), dLo+1)
}

// drawAxes draws the grid, the frame and the axis labels.
func (c *chart) drawAxes() {
	for d := c.dLo; d <= c.dHi; d++ {
		for k := 1; k <= 9; k++ {
			v := float64(k) * math.Pow(10, d)
			if math.Log10(v) > c.dHi+1e-9 {
				break
			}
			px := c.x(v)
			stroke := "#eee"
			if k == 1 {
				stroke = "#ccc"
				c.w(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", px, chartTop+chartPlotH+18, msLabel(v))
			}
			c.w(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>`+"\n", px, chartTop, px, chartTop+chartPlotH, stroke)
		}
	}
	for pct := 0; pct <= 100; pct += 10 {
		py := c.y(float64(pct))
		c.w(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>`+"\n", chartLeft, py, chartLeft+chartPlotW, py)
		c.w(`<text x="%d" y="%.1f" text-anchor="end">%d%%</text>`+"\n", chartLeft-8, py+4, pct)
	}
	c.w(`<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", chartLeft, chartTop, chartPlotW, chartPlotH)
	c.w(`<text x="%d" y="%d" text-anchor="middle">latency, ms (log scale)</text>`+"\n", chartLeft+chartPlotW/2, chartTop+chartPlotH+38)
	c.w(`<text transform="translate(18 %d) rotate(-90)" text-anchor="middle">events delivered</text>`+"\n", chartTop+chartPlotH/2)
}

// drawCurves draws each CDF as a step through the quantile grid.
func (c *chart) drawCurves(curves []curve) {
	for _, cv := range curves {
		var pts []string
		for i, v := range cv.d.CDF {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", c.x(v), c.y(cdfGrid[i])))
		}
		c.w(`<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", cv.color, dashAttr(cv.dash), strings.Join(pts, " "))
	}
}

// drawLegend names each curve, then the modes that were not measured.
func (c *chart) drawLegend(curves []curve, missing []string) {
	for i, cv := range curves {
		yy := chartLegendTop + chartLineGap*i
		c.w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", chartLeft, yy, chartLeft+28, yy, cv.color, dashAttr(cv.dash))
		c.w(`<text x="%d" y="%d">%s</text>`+"\n", chartLeft+34, yy+4, html.EscapeString(cv.label))
	}
	for i, m := range missing {
		yy := chartLegendTop + chartLineGap*(len(curves)+i)
		c.w(`<text x="%d" y="%d" fill="#a00">%s at 500 events/s: not measured</text>`+"\n", chartLeft, yy+4, html.EscapeString(m))
	}
}

func dashAttr(dash string) string {
	if dash == "" {
		return ""
	}
	return fmt.Sprintf(` stroke-dasharray="%s"`, dash)
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
