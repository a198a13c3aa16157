// Package retry holds what the adapters share for talking to registries that
// come and go: exponential backoff with jitter, and a sleep that ends with
// its context.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff computes the waits between retries after consecutive failures: the
// wait doubles from Min up to Max, and each wait is drawn at random from its
// upper half so that many watchers (or control-plane replicas) failing
// together spread their retries.
type Backoff struct {
	Min, Max time.Duration
	failures int
}

// Next returns the wait before the next attempt and counts a failure.
func (b *Backoff) Next() time.Duration {
	d := b.Min
	for i := 0; i < b.failures && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	b.failures++
	half := d / 2
	return half + rand.N(d-half+1)
}

// Reset forgets past failures after a success.
func (b *Backoff) Reset() { b.failures = 0 }

// Failures is the number of failures since the last Reset.
func (b *Backoff) Failures() int { return b.failures }

// Sleep waits for d, reporting false when ctx ends first.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
