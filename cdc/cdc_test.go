package cdc

import (
	"log/slog"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Ids the stream drops are the sweeper's: the stream nudges it to sweep
// with its usual grace, and neither wakes it to take fresh rows nor stops
// counting as streaming, so the sweep does not claim beside a stream that
// is behind.
func TestDroppedIDsNudgeTheSweeper(t *testing.T) {
	s := New(decideCfg, nil, slog.New(slog.DiscardHandler))
	s.streaming.Store(true)
	s.shed(false, 3)
	select {
	case <-s.Dropped():
		t.Fatal("nudged by a hand-off that was taken")
	default:
	}
	s.shed(true, 3)
	select {
	case <-s.Dropped():
	default:
		t.Fatal("dropped ids did not nudge the sweeper")
	}
	select {
	case <-s.Wake():
		t.Error("a drop woke the sweeper to take fresh rows")
	default:
	}
	if !s.Streaming() {
		t.Error("not streaming after a drop: the sweep would claim fresh rows beside the stream")
	}
}
