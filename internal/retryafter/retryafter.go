// Package retryafter parses the Retry-After header of an HTTP answer.
package retryafter

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Max bounds what a runner can ask for; a day is already more
// than any sane maintenance window.
const Max = 24 * time.Hour

// Parse reads a Retry-After header: delay-seconds or an HTTP
// date (RFC 9110 §10.2.3). ok is false for a missing or malformed value.
func Parse(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			if ne, isNum := err.(*strconv.NumError); isNum && ne.Err == strconv.ErrRange {
				return Max, true
			}
			return 0, false
		}
		return min(time.Duration(min(secs, uint64(Max/time.Second)))*time.Second, Max), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return min(max(t.Sub(now), 0), Max), true
}
