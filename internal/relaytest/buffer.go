package relaytest

import (
	"bytes"
	"strings"
	"sync"
)

// Buffer collects a process's output while others read it: writes and
// reads are safe at the same time. With Limit above zero it keeps only the
// last Limit bytes, so that a long run cannot fill the memory with logs.
type Buffer struct {
	// Limit bounds what is kept; set it before the first write.
	Limit int

	mu  sync.Mutex
	buf []byte
}

// Write appends p, dropping the oldest bytes past Limit.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if b.Limit > 0 && len(b.buf) > b.Limit {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.Limit:]...)
	}
	return len(p), nil
}

// String is everything kept so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// LastLines is the last n lines of s, without its final newline.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lineWriter hands each complete line written to it to fn; flush hands
// over a last line that has no newline. It takes one writer at a time:
// Start makes it a command's stdout and stderr at once, which os/exec then
// writes from one goroutine, and flushes it after Wait.
type lineWriter struct {
	fn      func(line string)
	partial []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.fn(string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
}

func (w *lineWriter) flush() {
	if len(w.partial) > 0 {
		w.fn(string(w.partial))
		w.partial = nil
	}
}
