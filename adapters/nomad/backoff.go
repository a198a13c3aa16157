package nomad

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff computes the waits between reconnections: the wait doubles from
// min up to max, and each wait is drawn at random from its upper half so that
// many control-plane replicas failing together spread their retries.
type backoff struct {
	min, max time.Duration
	failures int
}

// next returns the wait before the next attempt and counts a failure.
func (b *backoff) next() time.Duration {
	d := b.min
	for i := 0; i < b.failures && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	b.failures++
	half := d / 2
	return half + rand.N(d-half+1)
}

// reset forgets past failures.
func (b *backoff) reset() { b.failures = 0 }

// sleep waits for d, reporting false when ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
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
