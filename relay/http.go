package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/outbox-relay/outbox-relay/internal/retryafter"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// maxDrain is how much of an answer is read so the connection can be
// reused; a longer answer is cut and its connection closed.
const maxDrain = 64 << 10

// newClient makes the runner's HTTP client and its quick-retry policy;
// check decides the quick retries (see quickRetry). do runs the policy:
// the retryablehttp.Client holds it, its Do is not used.
func newClient(cfg Config, check retryablehttp.CheckRetry) *retryablehttp.Client {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          cfg.Concurrency * 2,
		MaxIdleConnsPerHost:   cfg.Concurrency * 2, // keep-alive for every worker
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{
		Transport: tr,
		Timeout:   cfg.HTTPTimeout,
		// A redirect is an answer, not an instruction: the URL is
		// configured, and following it could send events elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c.Logger = nil
	c.RetryMax = quickRetries
	c.RetryWaitMin = 50 * time.Millisecond
	c.RetryWaitMax = 500 * time.Millisecond
	c.CheckRetry = check
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	return c
}

// retryConnectionErrors retries in process only when there is no answer at
// all and no timeout: an answer, even a 503, goes back to the table with a
// backoff, and a timeout has already spent the attempt's time.
func retryConnectionErrors(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil || err == nil {
		return false, nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, nil
	}
	return true, nil
}

// quickRetry retries connection errors in process (retryConnectionErrors)
// only while they look like a blip: the runner is otherwise healthy, and
// few connections failed in the last second. When many requests fail at
// once, or the breaker is open (a probe), the failure goes to the breaker
// instead of adding connections to a runner that is down.
func (s *sender) quickRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if err != nil && !s.quick.blip(time.Now()) {
		return false, nil
	}
	return retryConnectionErrors(ctx, resp, err)
}

// post sends one row to the runner and reads what it answered.
func (s *sender) post(ctx context.Context, r *store.Row) answer {
	req, body, err := s.newRequest(ctx, r)
	if err != nil {
		return answer{err: fmt.Errorf("build request: %w", err)}
	}
	resp, err := s.do(req, body)
	if err != nil {
		return answer{err: describe(err)}
	}
	defer resp.Body.Close()
	if resp.ContentLength != 0 { // a 204 has nothing to drain
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	}
	a := answer{code: resp.StatusCode}
	if v := resp.Header.Get("Retry-After"); v != "" {
		a.retryAfter, _ = retryafter.Parse(v, time.Now())
	}
	return a
}

// do sends req, whose body is body, with the quick retries of s.client's
// policy (newClient). It is retryablehttp.Client.Do's loop as that policy
// runs it (no logger, hooks or response handler; errors passed through),
// without its per-request costs: a request wrapper and its closures.
func (s *sender) do(req *http.Request, body []byte) (*http.Response, error) {
	c := s.client
	for i := 0; ; i++ {
		req.Body = newBodyReader(body)
		resp, err := c.HTTPClient.Do(req)
		retry, checkErr := c.CheckRetry(req.Context(), resp, err)
		if !retry || i >= c.RetryMax {
			if err == nil && checkErr == nil && !retry {
				return resp, nil
			}
			// As retryablehttp does after a failed attempt: connections
			// kept alive to a runner that fails may be broken too.
			c.HTTPClient.CloseIdleConnections()
			if checkErr != nil {
				return resp, checkErr
			}
			return resp, err
		}
		if err == nil { // an answer to retry: read it so its connection is reused
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
		}
		t := time.NewTimer(c.Backoff(c.RetryWaitMin, c.RetryWaitMax, i, resp))
		select {
		case <-req.Context().Done():
			t.Stop()
			c.HTTPClient.CloseIdleConnections()
			return nil, req.Context().Err()
		case <-t.C:
		}
		// A copy to set the next body on: the transport may still close
		// the last one (persistConn.writeLoop).
		next := *req
		req = &next
	}
}

// newBodyReader is a request body over b. The transport knows these
// types for in memory and writes the headers and the body in one
// segment; a reader of its own type would cost a write of its own.
func newBodyReader(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

// describe turns a client error into a short reason. url.Error quotes the
// URL, which may hold credentials: the runner is named by host only.
func describe(err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("runner timed out")
	case errors.Is(err, context.Canceled):
		return errors.New("cancelled at shutdown")
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("runner unreachable: %w", err)
}
