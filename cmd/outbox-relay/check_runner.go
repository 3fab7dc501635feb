package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"
)

// The item of the runner: can the relay reach it.

// runnerProbeTimeout bounds the runner probe, name resolution included.
const runnerProbeTimeout = 5 * time.Second

// probeRunner asks the runner for a HEAD, or an OPTIONS when the HEAD gets
// no answer for a reason other than a refused connection or a timeout (a
// server that drops HEAD requests): any answer shows it is reachable, and
// neither sends an event.
func probeRunner(ctx context.Context, raw string) checkItem {
	it := checkItem{Name: "runner"}
	shown := redactedURL(raw)
	ctx, cancel := context.WithTimeout(ctx, runnerProbeTimeout)
	defer cancel()
	if err := resolveRunner(ctx, raw); err != nil {
		it.Status, it.Detail = checkFail, fmt.Sprintf("%s: %v", shown, err)
		it.Fix = "correct the host in RELAY_RUNNER_URL, or the DNS where the relay runs"
		return it
	}
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment} // as the relay's client
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	start := time.Now()
	method := http.MethodHead
	resp, err := askRunner(ctx, client, method, raw)
	if err != nil && !refusedOrTimedOut(err) {
		method = http.MethodOptions
		resp, err = askRunner(ctx, client, method, raw)
	}
	if err != nil {
		it.Status, it.Detail = checkFail, fmt.Sprintf("%s: %v", shown, err)
		it.Fix = "start the runner, or correct RELAY_RUNNER_URL; until it answers, events wait in the table"
		return it
	}
	it.Status = checkOK
	it.Detail = fmt.Sprintf("%s answered %s with %s in %s", shown, method, resp.Status, roundMS(time.Since(start)))
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		it.Status = checkWarn
		it.Detail += fmt.Sprintf(" (Location %q): the relay follows no redirect, and a 3xx to its POST makes the event dead",
			resp.Header.Get("Location"))
		it.Fix = "set RELAY_RUNNER_URL to the URL the runner serves"
	}
	return it
}

// resolveRunner looks the runner's host up, unless a proxy does that.
func resolveRunner(ctx context.Context, raw string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, raw, nil)
	if err != nil {
		return err
	}
	if proxy, err := http.ProxyFromEnvironment(req); err != nil || proxy != nil {
		return nil // the proxy resolves it; the request says whether it can
	}
	host := req.URL.Hostname()
	if net.ParseIP(host) != nil {
		return nil
	}
	if _, err := net.DefaultResolver.LookupHost(ctx, host); err != nil {
		return fmt.Errorf("host %s does not resolve: %w", host, err)
	}
	return nil
}

// askRunner sends one bodiless request. Its error leaves out the URL,
// which the caller shows without a password. The answer's body is closed
// unread: the transport is the probe's own and closes its connections when
// the probe ends, so none is kept for reuse.
func askRunner(ctx context.Context, client *http.Client, method, raw string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, raw, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "outbox-relay/"+version+" (check)")
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	resp.Body.Close()
	return resp, nil
}

func refusedOrTimedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// redactedURL is the runner URL as check shows it: without a password.
func redactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "RELAY_RUNNER_URL"
	}
	return u.Redacted()
}

// roundMS shows a duration in whole milliseconds, a fast one as "<1ms".
func roundMS(d time.Duration) string {
	if d < time.Millisecond {
		return "<1ms"
	}
	return d.Round(time.Millisecond).String()
}
