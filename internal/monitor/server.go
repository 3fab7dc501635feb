package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/outbox-relay/outbox-relay/relay"
)

// Server serves /healthz (the process is alive), /readyz (the database
// answers; the body has the CDC state, slot figures, the runner's state
// and the rows whose writes the database refuses) and /metrics.
//
// Refused writes and a runner that is down show in the body but leave
// /readyz at 200: the relay is usually a sidecar, and an unready sidecar
// takes the whole pod, the application with it, out of its Service. One
// bad row or a runner's deploy must not do that.
type Server struct {
	srv *http.Server
	ln  net.Listener
	log *slog.Logger
}

// NewServer listens on addr at once, so a port clash fails start-up
// instead of surfacing later.
func NewServer(addr string, pool *pgxpool.Pool, m *Metrics, w *Watcher, d DelivererView, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain")
		_, _ = rw.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		runner := d.Runner()
		body := Readiness{Ready: true, Database: "ok", Last: w.Last(), WriteErrors: d.WriteErrors(), Runner: &runner}
		if err := pool.Ping(ctx); err != nil {
			body.Ready, body.Database = false, err.Error()
		}
		rw.Header().Set("Content-Type", "application/json")
		if !body.Ready {
			rw.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(rw).Encode(body)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	return &Server{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		ln:  ln,
		log: log,
	}, nil
}

// DelivererView is what /readyz shows of the Deliverer: the rows whose
// writes the database refuses, and the runner's state.
type DelivererView interface {
	WriteErrors() []relay.WriteError
	Runner() relay.RunnerState
}

// Readiness is the body of /readyz; `outbox-relay status` reads it too.
type Readiness struct {
	Ready       bool               `json:"ready"`
	Database    string             `json:"database"`
	Last        Snapshot           `json:"last_refresh"`
	WriteErrors []relay.WriteError `json:"write_errors"`
	// Runner is the runner breaker's state; nil from a relay older than
	// the breaker.
	Runner *relay.RunnerState `json:"runner,omitempty"`
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Run serves until ctx is done, then shuts down.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
