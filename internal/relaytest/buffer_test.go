package relaytest

import (
	"strings"
	"testing"
)

func TestBufferKeepsTheTail(t *testing.T) {
	b := &Buffer{Limit: 5}
	for _, s := range []string{"abc", "defg", "h"} {
		if _, err := b.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.String(); got != "defgh" {
		t.Errorf("kept %q, want the last 5 bytes %q", got, "defgh")
	}
	var all Buffer
	_, _ = all.Write([]byte("one\ntwo\nthree\n"))
	if got := LastLines(all.String(), 2); got != "two\nthree" {
		t.Errorf("LastLines = %q", got)
	}
}

func TestLineWriterHandsOverWholeLines(t *testing.T) {
	var lines []string
	w := &lineWriter{fn: func(l string) { lines = append(lines, l) }}
	for _, s := range []string{"a", "b\nc\n", "d"} {
		_, _ = w.Write([]byte(s))
	}
	w.flush()
	if got := strings.Join(lines, "|"); got != "ab|c|d" {
		t.Errorf("lines %q, want ab|c|d", got)
	}
}
