package console

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
)

// Charts are SVG drawn on the server from webhookendpointstats' series: no script, no
// library, and they read without a legend hunt: the title says what is measured and in which
// unit, each line is named at its end in its own colour, the y axis is labelled in that unit,
// the x axis in local clock times or days, and each point says its numbers on hover.

// Chart geometry, in the SVG's own units (it scales to its box).
const (
	chartW     = 480
	chartH     = 184
	plotLeft   = 48
	plotRight  = 440
	plotTop    = 14
	plotBottom = 150
	xLabelY    = 168
)

// Chart is what the chart template draws.
type Chart struct {
	// Title names the measure and its unit; Sub says the window and the step.
	Title, Sub string
	// Headline is the window's figure, such as 99.2% or p95 120 ms.
	Headline string
	W, H     int
	Left     float64
	Right    float64
	Top      float64
	Bottom   float64
	XLabelY  float64
	YTicks   []Tick
	XTicks   []Tick
	Lines    []Line
	Dots     []Dot
	Hits     []Hit
	// Empty says why there is nothing to draw; the axes are drawn all the same.
	Empty string
	// Label is the chart's accessible name.
	Label string
	// Where the y labels end, the x ticks end, and the plot's middle (for Empty).
	YLabelX, TickEnd, MidX, MidY, HitH float64
}

// Tick is an axis mark at Pos (y for the y axis, x for the x axis); its label's baseline is
// at Text.
type Tick struct {
	Pos   float64
	Text  float64
	Label string
}

// Line is one series: its path, its colour class, and its name written at its end.
type Line struct {
	Class  string
	D      string
	Name   string
	NameX  float64
	NameY  float64
	Legend string
}

// Dot marks a point of a line.
type Dot struct {
	X, Y  float64
	Class string
}

// Hit is the hover area of one point: a column of the plot with the point's numbers.
type Hit struct {
	X, W  float64
	Title string
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

// frame lays out a window's time axis and the empty chart around it.
func frame(win *historyv1alpha1.StatsWindow, title string, loc *time.Location) *Chart {
	c := &Chart{
		Title: title, W: chartW, H: chartH, Left: plotLeft, Right: plotRight, Top: plotTop, Bottom: plotBottom, XLabelY: xLabelY,
		YLabelX: plotLeft - 6, TickEnd: plotBottom + 4, MidX: (plotLeft + plotRight) / 2, MidY: (plotTop+plotBottom)/2 + 4, HitH: plotBottom - plotTop,
	}
	if win == nil {
		c.Empty = "No statistics: the delivery history is not available"
		c.Label = title
		return c
	}
	step := time.Duration(win.SeriesStepSeconds) * time.Second
	c.Sub = fmt.Sprintf("last %s, per %s", windowWords(win.Window), stepWords(step))
	c.Label = title + ", " + c.Sub
	start, end := win.Start.Time, win.End.Time
	if !end.After(start) {
		return c
	}
	c.XTicks = timeTicks(start, end, loc)
	// The right edge is now: say so, unless a tick's label is already there.
	if n := len(c.XTicks); n == 0 || plotRight-c.XTicks[n-1].Pos > 34 {
		c.XTicks = append(c.XTicks, Tick{Pos: plotRight, Label: "now"})
	}
	if zone, _ := end.In(loc).Zone(); zone != "" {
		c.Sub += ", " + zone
	}
	return c
}

// x is the position of time t on the plot.
func x(start, end, t time.Time) float64 {
	f := float64(t.Sub(start)) / float64(end.Sub(start))
	return round1(plotLeft + f*(plotRight-plotLeft))
}

// timeTicks are the x-axis labels, in local time: every 6 hours of the clock for a day,
// every midnight for a week (weekday and date), every quarter of an hour for an hour.
func timeTicks(start, end time.Time, loc *time.Location) []Tick {
	s := start.In(loc)
	var ticks []Tick
	add := func(t time.Time, layout string) {
		if !t.Before(start) && !t.After(end) {
			ticks = append(ticks, Tick{Pos: x(start, end, t), Label: t.Format(layout)})
		}
	}
	switch span := end.Sub(start); {
	case span > 36*time.Hour:
		for t := time.Date(s.Year(), s.Month(), s.Day(), 0, 0, 0, 0, loc); !t.After(end); t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc) {
			add(t, "Mon 2")
		}
	case span > 2*time.Hour:
		for t := time.Date(s.Year(), s.Month(), s.Day(), s.Hour(), 0, 0, 0, loc); !t.After(end); t = t.Add(time.Hour) {
			if t.Hour()%6 == 0 {
				add(t, "15:04")
			}
		}
	default:
		for t := time.Date(s.Year(), s.Month(), s.Day(), s.Hour(), 0, 0, 0, loc); !t.After(end); t = t.Add(15 * time.Minute) {
			add(t, "15:04")
		}
	}
	return ticks
}

func windowWords(w string) string {
	switch w {
	case "1h":
		return "hour"
	case "2h":
		return "2 hours"
	case "24h":
		return "24 hours"
	case "7d":
		return "7 days"
	}
	return w
}

func stepWords(d time.Duration) string {
	switch {
	case d == time.Hour:
		return "hour"
	case d%time.Hour == 0:
		return fmt.Sprintf("%d hours", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%d minutes", d/time.Minute)
	}
	return d.String()
}

// successChart draws the share of finished deliveries that succeeded, point by point, on a
// 0 to 100% axis; a point in which no delivery finished is a gap, not a zero.
func successChart(win *historyv1alpha1.StatsWindow, loc *time.Location) *Chart {
	c := frame(win, "Success rate (% of deliveries)", loc)
	c.YTicks = yTicks([]float64{0, 50, 100}, 100, func(v float64) string { return strconv.Itoa(int(v)) + "%" })
	if win == nil {
		return c
	}
	if win.SuccessRate != nil {
		c.Headline = pctText(win.SuccessRate)
	}
	step := time.Duration(win.SeriesStepSeconds) * time.Second
	var d strings.Builder
	open := false
	any := false
	for _, p := range win.Series {
		x0, x1 := x(win.Start.Time, win.End.Time, p.Start.Time), x(win.Start.Time, win.End.Time, p.Start.Add(step))
		mid := round1((x0 + x1) / 2)
		when := pointTime(p.Start.Time, step, loc)
		total := p.Succeeded + p.Failed
		if total == 0 {
			open = false
			c.Hits = append(c.Hits, Hit{X: x0, W: round1(x1 - x0), Title: when + ": no delivery finished"})
			continue
		}
		any = true
		rate := float64(p.Succeeded) / float64(total) * 100
		y := yOf(rate, 100)
		if open {
			fmt.Fprintf(&d, " L%g %g", mid, y)
		} else {
			fmt.Fprintf(&d, "M%g %g", mid, y)
			open = true
		}
		cls := "ok"
		if p.Failed > 0 {
			cls = "bad"
		}
		c.Dots = append(c.Dots, Dot{X: mid, Y: y, Class: cls})
		c.Hits = append(c.Hits, Hit{X: x0, W: round1(x1 - x0), Title: fmt.Sprintf("%s: %s succeeded (%s of %s deliveries; %s failed)",
			when, strconv.FormatFloat(rate, 'f', 1, 64)+"%", numText(p.Succeeded), numText(total), numText(p.Failed))})
	}
	if !any {
		c.Empty = "No delivery finished in the last " + windowWords(win.Window)
		return c
	}
	c.Lines = []Line{{Class: "ok", D: strings.TrimSpace(d.String())}}
	return c
}

// latencyChart draws the p50 and p95 of attempt durations, point by point, on a millisecond
// axis whose top is a round number above the highest p95.
func latencyChart(win *historyv1alpha1.StatsWindow, loc *time.Location) *Chart {
	c := frame(win, "Latency of attempts (ms)", loc)
	if win == nil || win.Latency.P95Milliseconds == 0 && win.Latency.P50Milliseconds == 0 && !hasAttempts(win) {
		c.YTicks = yTicks([]float64{0}, 1, func(float64) string { return "0" })
		if win != nil {
			c.Empty = "No attempt in the last " + windowWords(win.Window)
		}
		return c
	}
	if win.Latency.P95Milliseconds > 0 {
		c.Headline = "p95 " + msText(win.Latency.P95Milliseconds)
	}
	var top int64 = 1
	for _, p := range win.Series {
		top = max(top, p.LatencyP95Milliseconds, p.LatencyP50Milliseconds)
	}
	top = niceCeil(top)
	c.YTicks = yTicks([]float64{0, float64(top / 2), float64(top)}, float64(top), func(v float64) string { return axisMillis(int64(v)) })
	step := time.Duration(win.SeriesStepSeconds) * time.Second
	var p50, p95 strings.Builder
	open := false
	any := false
	var lastX, last50, last95 float64
	for _, p := range win.Series {
		x0, x1 := x(win.Start.Time, win.End.Time, p.Start.Time), x(win.Start.Time, win.End.Time, p.Start.Add(step))
		mid := round1((x0 + x1) / 2)
		when := pointTime(p.Start.Time, step, loc)
		if p.Attempts == 0 {
			open = false
			c.Hits = append(c.Hits, Hit{X: x0, W: round1(x1 - x0), Title: when + ": no attempt"})
			continue
		}
		any = true
		y50, y95 := yOf(float64(p.LatencyP50Milliseconds), float64(top)), yOf(float64(p.LatencyP95Milliseconds), float64(top))
		cmd := "M"
		if open {
			cmd = " L"
		}
		fmt.Fprintf(&p50, "%s%g %g", cmd, mid, y50)
		fmt.Fprintf(&p95, "%s%g %g", cmd, mid, y95)
		open = true
		c.Dots = append(c.Dots, Dot{X: mid, Y: y95, Class: "p95"}, Dot{X: mid, Y: y50, Class: "p50"})
		lastX, last50, last95 = mid, y50, y95
		c.Hits = append(c.Hits, Hit{X: x0, W: round1(x1 - x0), Title: fmt.Sprintf("%s: p50 %s, p95 %s over %s attempts",
			when, msText(max(p.LatencyP50Milliseconds, 1)), msText(max(p.LatencyP95Milliseconds, 1)), numText(p.Attempts))})
	}
	if !any {
		c.Empty = "No attempt in the last " + windowWords(win.Window)
		return c
	}
	// Names at the lines' last points, kept apart when the lines are close.
	n95, n50 := last95, last50
	if n50-n95 < 11 {
		n95, n50 = (last95+last50)/2-6, (last95+last50)/2+6
	}
	c.Lines = []Line{
		{Class: "p95", D: strings.TrimSpace(p95.String()), Name: "p95", NameX: round1(lastX + 8), NameY: round1(n95 + 4)},
		{Class: "p50", D: strings.TrimSpace(p50.String()), Name: "p50", NameX: round1(lastX + 8), NameY: round1(n50 + 4)},
	}
	return c
}

func hasAttempts(win *historyv1alpha1.StatsWindow) bool {
	for _, p := range win.Series {
		if p.Attempts > 0 {
			return true
		}
	}
	return false
}

// yTicks are the y axis's marks at values, on an axis from 0 to top.
func yTicks(values []float64, top float64, label func(float64) string) []Tick {
	ticks := make([]Tick, len(values))
	for i, v := range values {
		y := yOf(v, top)
		ticks[i] = Tick{Pos: y, Text: y + 4, Label: label(v)}
	}
	return ticks
}

// yOf is the y position of v on an axis from 0 to top.
func yOf(v, top float64) float64 {
	if top <= 0 {
		return plotBottom
	}
	return round1(plotBottom - v/top*(plotBottom-plotTop))
}

// niceCeil rounds up to 2, 5 or 10 times a power of ten: axis tops people read at a glance,
// with a whole middle tick.
func niceCeil(v int64) int64 {
	p := int64(1)
	for p*10 < v {
		p *= 10
	}
	for _, m := range []int64{2, 5, 10} {
		if m*p >= v && (m*p)%2 == 0 {
			return m * p
		}
	}
	return 20 * p
}

// axisMillis labels the latency axis: 0, 250 ms, 1.5 s.
func axisMillis(v int64) string {
	switch {
	case v == 0:
		return "0"
	case v < 1000:
		return strconv.FormatInt(v, 10) + " ms"
	}
	return strconv.FormatFloat(float64(v)/1000, 'f', -1, 64) + " s"
}

// pointTime names a point's span for its hover text: "14:00–15:00" or "Mon 2 06:00–12:00".
func pointTime(start time.Time, step time.Duration, loc *time.Location) string {
	s, e := start.In(loc), start.Add(step).In(loc)
	if step >= 6*time.Hour || s.Day() != e.Day() && step > time.Hour {
		return s.Format("Mon 2 15:04") + "–" + e.Format("15:04")
	}
	return s.Format("15:04") + "–" + e.Format("15:04")
}
