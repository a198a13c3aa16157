package consul

import (
	"context"
	"testing"
	"time"
)

func TestNextIndex(t *testing.T) {
	tests := []struct{ prev, got, want uint64 }{
		{0, 0, 1},    // an index of 0 would make every query return at once
		{0, 7, 7},    // first read
		{7, 7, 7},    // the wait ran out
		{7, 9, 9},    // a change
		{9, 3, 0},    // went backwards: start over
		{9, 0, 0},    // went backwards to 0: start over
		{0, 1, 1},    // after a reset
		{1, 0, 0},    // backwards from 1 to 0: start over
		{12, 12, 12}, // unchanged
	}
	for _, tt := range tests {
		if got := nextIndex(tt.prev, tt.got); got != tt.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", tt.prev, tt.got, got, tt.want)
		}
	}
}

func TestGate(t *testing.T) {
	g := newGate()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if g.wait(ctx) {
		t.Fatal("a new gate is open")
	}
	g.set(true)
	if !g.wait(context.Background()) {
		t.Fatal("an open gate blocks")
	}
	g.set(false)
	done := make(chan bool)
	go func() { done <- g.wait(context.Background()) }()
	select {
	case <-done:
		t.Fatal("a closed gate lets through")
	case <-time.After(20 * time.Millisecond):
	}
	g.set(true)
	g.set(true) // opening twice is harmless
	if !<-done {
		t.Fatal("waiter not released when the gate opened")
	}
}
