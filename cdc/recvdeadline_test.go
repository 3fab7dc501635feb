package cdc

import (
	"context"
	"testing"
	"time"
)

// The reader's receive context is reused while it lasts and never ends
// later than asked.
func TestRecvDeadline(t *testing.T) {
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()
	var rd recvDeadline
	defer rd.stop()
	t0 := time.Now().Add(time.Hour)

	c1 := rd.until(parent, t0)
	if dl, ok := c1.Deadline(); !ok || !dl.Equal(t0) {
		t.Fatalf("deadline %v, want %v", dl, t0)
	}
	if c := rd.until(parent, t0.Add(time.Minute)); c != c1 {
		t.Error("a later time made a new context; the current one ends sooner and may serve")
	}
	c2 := rd.until(parent, t0.Add(-time.Minute))
	if c2 == c1 {
		t.Fatal("an earlier time kept a context that ends too late")
	}
	if c1.Err() == nil {
		t.Error("the replaced context was not cancelled")
	}
	if dl, _ := c2.Deadline(); !dl.Equal(t0.Add(-time.Minute)) {
		t.Errorf("deadline %v, want %v", dl, t0.Add(-time.Minute))
	}

	past := rd.until(parent, time.Now().Add(-time.Second)) // ended at once
	if past.Err() == nil {
		t.Fatal("a context past its deadline is not done")
	}
	if c := rd.until(parent, t0); c == past || c.Err() != nil {
		t.Error("an ended context was handed out again")
	}

	cancelParent()
	if c := rd.until(parent, t0); c.Err() == nil {
		t.Error("the parent's end did not reach the receive context")
	}
}
