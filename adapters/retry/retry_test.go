package retry

import (
	"context"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := &Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	ceilings := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i, c := range ceilings {
		c *= time.Millisecond
		d := b.Next()
		if d < c/2 || d > c {
			t.Errorf("wait %d = %s, want within [%s, %s]", i, d, c/2, c)
		}
	}
	if b.Failures() != len(ceilings) {
		t.Errorf("failures = %d", b.Failures())
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Errorf("after reset: wait %s, want at most the minimum", d)
	}
	for range 100 { // many failures must not overflow
		b.Next()
	}
	if d := b.Next(); d < 500*time.Millisecond || d > time.Second {
		t.Errorf("after many failures: wait %s, want within [500ms, 1s]", d)
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(t.Context(), time.Millisecond) {
		t.Fatal("a short sleep must complete")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if Sleep(ctx, time.Hour) || Sleep(ctx, 0) {
		t.Fatal("a cancelled context must end the sleep")
	}
}
