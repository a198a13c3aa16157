package ratelimit

import (
	"context"
	"errors"
	"time"
)

// Store keeps the counters. Keys name one counter in one window (they end
// with the window's number), so a store never resets a counter: it forgets
// it once it has expired.
type Store interface {
	// Increment adds each hit's N to its counter, creating it (to expire at
	// the hit's Expires) when needed, and sets the hit's Count to the
	// counter's value right after that addition, as if the hits had been
	// added one by one. It sets every Count or returns an error.
	Increment(ctx context.Context, hits []Hit) error
	// Name names the store in metrics and logs ("memory", "redis").
	Name() string
}

// Hit is one addition to a counter.
type Hit struct {
	// Key names the counter; the store does not keep the slice.
	Key []byte
	// N is the number of hits to add.
	N uint64
	// Expires is when the counter's window ends.
	Expires time.Time
	// Count is set by Increment.
	Count uint64
}

// ErrUnavailable is returned, without trying, while a store is known to be
// down (between two probes).
var ErrUnavailable = errors.New("ratelimit: store unavailable")
