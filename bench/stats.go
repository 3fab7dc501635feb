package main

import (
	"math"
	"slices"
)

// distribution summarises latencies in milliseconds.
type distribution struct {
	Count int     `json:"count"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
	// CDF is the latency at each quantile of cdfGrid, for the chart.
	CDF []float64 `json:"cdf_ms,omitempty"`
	// CensoredMs, when set, is the wait after which an event counted as
	// missing: missing events are in the figures at this value, so a
	// quantile equal to it means "more than this".
	CensoredMs float64 `json:"censored_ms,omitempty"`
}

// cell formats a quantile of d, "> wait" when it is a missing event.
func (d distribution) cell(v float64) string {
	if d.CensoredMs > 0 && v >= d.CensoredMs {
		return "> " + num(d.CensoredMs)
	}
	return num(v)
}

// cdfGrid is the quantiles (in percent) kept for the chart: every half
// percent, then finer in the tail.
var cdfGrid = func() []float64 {
	var g []float64
	for q := 0.0; q < 99; q += 0.5 {
		g = append(g, q)
	}
	for q := 99.0; q < 100; q += 0.1 {
		g = append(g, math.Round(q*10)/10)
	}
	return append(g, 99.95, 100)
}()

// summarise sorts ms in place and summarises it.
func summarise(ms []float64) distribution {
	d := distribution{Count: len(ms)}
	if len(ms) == 0 {
		return d
	}
	slices.Sort(ms)
	sum := 0.0
	for _, v := range ms {
		sum += v
	}
	d.Mean = sum / float64(len(ms))
	d.P50, d.P95, d.P99, d.P999 = quantile(ms, 50), quantile(ms, 95), quantile(ms, 99), quantile(ms, 99.9)
	d.Max = ms[len(ms)-1]
	d.CDF = make([]float64, len(cdfGrid))
	for i, q := range cdfGrid {
		d.CDF[i] = round3(quantile(ms, q))
	}
	return d
}

// quantile is the nearest-rank q-th percentile of sorted s.
func quantile(s []float64, q float64) float64 {
	if len(s) == 0 {
		return 0
	}
	rank := int(math.Ceil(q / 100 * float64(len(s))))
	return s[min(max(rank-1, 0), len(s)-1)]
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// median is the middle of v, the mean of the two middles for an even
// count; 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}
