package ratelimit

import (
	"hash/maphash"
	"sync"
	"time"
)

// overLimit remembers the counters that reached their limit, until their
// window ends. A counter only grows within its window, so such a counter
// refuses every later request of the window: answering them without the
// store is exact, and it keeps refused floods away from Redis.
type overLimit struct {
	seed   maphash.Seed
	shards [overShards]overShard
}

const overShards = 16

type overShard struct {
	mu        sync.RWMutex
	keys      map[string]int64 // key → end of its window (unix ns)
	nextSweep int64
}

func newOverLimit() *overLimit {
	o := &overLimit{seed: maphash.MakeSeed()}
	for i := range o.shards {
		o.shards[i].keys = map[string]int64{}
	}
	return o
}

// has reports whether key is known to be over its limit at now.
func (o *overLimit) has(key []byte, now int64) bool {
	sh := &o.shards[maphash.Bytes(o.seed, key)%overShards]
	sh.mu.RLock()
	end, ok := sh.keys[string(key)]
	sh.mu.RUnlock()
	return ok && now < end
}

// add remembers key until end.
func (o *overLimit) add(key []byte, end, now int64) {
	sh := &o.shards[maphash.Bytes(o.seed, key)%overShards]
	sh.mu.Lock()
	if now >= sh.nextSweep {
		for k, e := range sh.keys {
			if e <= now {
				delete(sh.keys, k)
			}
		}
		sh.nextSweep = now + int64(time.Second)
	}
	sh.keys[string(key)] = end
	sh.mu.Unlock()
}

// len returns the number of keys remembered.
func (o *overLimit) len() int {
	n := 0
	for i := range o.shards {
		sh := &o.shards[i]
		sh.mu.RLock()
		n += len(sh.keys)
		sh.mu.RUnlock()
	}
	return n
}
