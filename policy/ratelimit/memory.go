package ratelimit

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// MemoryStore keeps the counters in this process: exact for one policyd.
// Expired counters are dropped as the store is used (each shard sweeps
// itself at most once a second), so memory follows the number of counters
// alive, not their history.
type MemoryStore struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [memoryShards]memoryShard
}

const memoryShards = 64

type memoryShard struct {
	mu        sync.Mutex
	counters  map[string]*memCounter
	nextSweep int64 // unix nanoseconds
	_         [24]byte
}

type memCounter struct {
	count   uint64
	expires int64 // unix nanoseconds
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty store. now is the clock expiry is judged
// by (nil: time.Now); it must be the server's.
func NewMemoryStore(now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	s := &MemoryStore{now: now, seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].counters = map[string]*memCounter{}
	}
	return s
}

// Name implements Store.
func (s *MemoryStore) Name() string { return "memory" }

// Increment implements Store; it never fails.
func (s *MemoryStore) Increment(_ context.Context, hits []Hit) error {
	now := s.now().UnixNano()
	for i := range hits {
		h := &hits[i]
		sh := &s.shards[maphash.Bytes(s.seed, h.Key)%memoryShards]
		sh.mu.Lock()
		if now >= sh.nextSweep {
			sh.sweep(now)
		}
		c, ok := sh.counters[string(h.Key)]
		if !ok {
			c = &memCounter{expires: h.Expires.UnixNano()}
			sh.counters[string(h.Key)] = c
		}
		c.count += h.N
		h.Count = c.count
		sh.mu.Unlock()
	}
	return nil
}

// sweep drops the expired counters of a shard (its lock held).
func (sh *memoryShard) sweep(now int64) {
	for k, c := range sh.counters {
		if c.expires <= now {
			delete(sh.counters, k)
		}
	}
	sh.nextSweep = now + int64(time.Second)
}

// Len returns the number of counters kept (for tests and metrics).
func (s *MemoryStore) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.counters)
		sh.mu.Unlock()
	}
	return n
}
