package ratelimit

import (
	"context"
	"fmt"
	"math"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"
)

// RedisStore keeps the counters in Redis, so that several policyd replicas
// share them. Each counter is one key, INCRBY'd (atomic in Redis, so
// replicas admit exactly the limit between them) and given a TTL when this
// process first touches it in its window.
//
// Requests are not sent one by one: concurrent Increments queue up, and a
// few flushers each take whatever is queued, add up the hits per key, and
// send one pipeline (one round trip, one INCRBY per distinct key) for all of
// them. Each request then gets the count it would have seen alone: a key's
// hits are handed out in queue order from the value INCRBY returned.
//
// When Redis fails, the store is marked down: Increment returns
// ErrUnavailable at once, with no queueing and no goroutine, and one
// request every ProbeInterval is let through to find out whether Redis is
// back. The client (rueidis) is created on first use, so policyd starts
// while Redis is down, and it reconnects by itself.
type RedisStore struct {
	opt      rueidis.ClientOption
	timeout  time.Duration
	clientMu sync.Mutex
	client   rueidis.Client // nil until connected
	queue    chan *redisReq
	now      func() time.Time
	probe    time.Duration
	maxBatch int

	down      atomic.Bool
	queued    atomic.Int64 // requests sent to the flushers
	pipelines prometheus.Histogram
	nextProbe atomic.Int64
	stop      chan struct{}
	wg        sync.WaitGroup
}

// RedisOptions configure a RedisStore.
type RedisOptions struct {
	// Addr is host:port.
	Addr string
	// Flushers is how many pipelines may be in flight at once (default 1:
	// one flusher makes the largest pipelines, and a pipeline of 1,024
	// hits per round trip is far from a bound).
	Flushers int
	// MaxBatch bounds the hits of one pipeline (default 1024).
	MaxBatch int
	// Timeout bounds dialing and each read and write (default 250ms).
	Timeout time.Duration
	// ProbeInterval is how often a down store lets a request try Redis
	// (default 200ms).
	ProbeInterval time.Duration
	// Now is the server's clock, which TTLs are computed from (nil:
	// time.Now).
	Now func() time.Time
	// Registerer takes the store's metrics (nil: not registered).
	Registerer prometheus.Registerer
}

type redisReq struct {
	keys   []string
	ns     []uint64
	ttls   []time.Duration
	counts []uint64
	err    error
	done   chan struct{}
}

var _ Store = (*RedisStore)(nil)

// ttlSlack keeps a counter a while after its window, for replicas whose
// clocks are a little behind.
const ttlSlack = 10 * time.Second

// NewRedisStore connects lazily to Redis and starts the flushers; Close
// stops them.
func NewRedisStore(o RedisOptions) *RedisStore {
	if o.Flushers <= 0 {
		o.Flushers = 1
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1024
	}
	if o.Timeout <= 0 {
		o.Timeout = 250 * time.Millisecond
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = 200 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &RedisStore{
		opt: rueidis.ClientOption{
			InitAddress:       []string{o.Addr},
			Dialer:            net.Dialer{Timeout: o.Timeout},
			ConnWriteTimeout:  o.Timeout,
			DisableCache:      true, // no client-side caching: counters change all the time
			DisableRetry:      true, // INCRBY is not idempotent
			PipelineMultiplex: -1,   // one connection: the flusher sends one pipeline at a time
		},
		timeout:  o.Timeout,
		queue:    make(chan *redisReq, 4096),
		now:      o.Now,
		probe:    o.ProbeInterval,
		maxBatch: o.MaxBatch,
		stop:     make(chan struct{}),
		pipelines: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bowline_policyd_ratelimit_redis_pipeline_requests",
			Help:    "Requests counted by one Redis pipeline (one round trip): how well concurrent requests are batched.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(s.pipelines)
	}
	for range o.Flushers {
		s.wg.Add(1)
		go s.flusher()
	}
	return s
}

// Name implements Store.
func (s *RedisStore) Name() string { return "redis" }

// Close stops the flushers and closes the connections.
func (s *RedisStore) Close() error {
	close(s.stop)
	s.wg.Wait()
	s.clientMu.Lock()
	defer s.clientMu.Unlock()
	if s.client != nil {
		s.client.Close()
	}
	return nil
}

// conn returns the client, connecting first if needed.
func (s *RedisStore) conn() (rueidis.Client, error) {
	s.clientMu.Lock()
	defer s.clientMu.Unlock()
	if s.client == nil {
		c, err := rueidis.NewClient(s.opt)
		if err != nil {
			return nil, err
		}
		s.client = c
	}
	return s.client, nil
}

var redisReqPool = sync.Pool{New: func() any { return &redisReq{done: make(chan struct{}, 1)} }}

// Increment implements Store.
func (s *RedisStore) Increment(ctx context.Context, hits []Hit) error {
	if s.down.Load() {
		// One request at a time probes Redis; it holds the probe until
		// its batch is answered (flusher), so probes never pile up.
		now, next := time.Now().UnixNano(), s.nextProbe.Load()
		if now < next || !s.nextProbe.CompareAndSwap(next, math.MaxInt64) {
			return ErrUnavailable
		}
	}
	r := redisReqPool.Get().(*redisReq)
	r.keys, r.ns, r.ttls, r.counts, r.err = r.keys[:0], r.ns[:0], r.ttls[:0], r.counts[:0], nil
	now := s.now()
	for _, h := range hits {
		r.keys = append(r.keys, string(h.Key))
		r.ns = append(r.ns, h.N)
		r.ttls = append(r.ttls, h.Expires.Sub(now)+ttlSlack)
		r.counts = append(r.counts, 0)
	}
	s.queued.Add(1)
	select {
	case s.queue <- r:
	case <-ctx.Done():
		redisReqPool.Put(r)
		return ctx.Err()
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return ctx.Err() // r is abandoned to the flusher, then to the GC
	}
	err := r.err
	if err == nil {
		for i := range hits {
			hits[i].Count = r.counts[i]
		}
	}
	redisReqPool.Put(r)
	return err
}

// flusher sends what is queued, one pipeline at a time.
func (s *RedisStore) flusher() {
	defer s.wg.Done()
	b := &redisBatch{index: map[string]int{}, ttlSet: map[string]time.Time{}}
	for {
		var first *redisReq
		select {
		case first = <-s.queue:
		case <-s.stop:
			return
		}
		// Let the callers that are ready to run queue their requests
		// first: on a busy core this makes one pipeline of what would
		// have been several.
		runtime.Gosched()
		b.reqs = append(b.reqs[:0], first)
		n := len(first.keys)
	drain:
		for n < s.maxBatch {
			select {
			case r := <-s.queue:
				b.reqs = append(b.reqs, r)
				n += len(r.keys)
			default:
				break drain
			}
		}
		s.pipelines.Observe(float64(len(b.reqs)))
		err := s.send(b)
		if err != nil {
			s.down.Store(true)
			s.nextProbe.Store(time.Now().Add(s.probe).UnixNano())
			clear(b.ttlSet) // Redis may have lost the keys: set their TTLs again
		} else {
			s.down.Store(false)
		}
		for _, r := range b.reqs {
			r.err = err
			r.done <- struct{}{}
		}
	}
}

// redisBatch is a flusher's working memory.
type redisBatch struct {
	reqs   []*redisReq
	index  map[string]int
	keys   []string
	totals []uint64
	ttls   []time.Duration
	acc    []uint64
	cmds   rueidis.Commands
	incr   []int // the INCRBY of each key in cmds
	vals   []int64
	// ttlSet holds the keys this flusher gave a TTL, until they expire.
	ttlSet    map[string]time.Time
	nextSweep time.Time
}

// send runs one pipeline for the batch and hands out the counts.
func (s *RedisStore) send(b *redisBatch) error {
	clear(b.index)
	b.keys, b.totals, b.ttls = b.keys[:0], b.totals[:0], b.ttls[:0]
	for _, r := range b.reqs {
		for j, k := range r.keys {
			if i, ok := b.index[k]; ok {
				b.totals[i] += r.ns[j]
				continue
			}
			b.index[k] = len(b.keys)
			b.keys = append(b.keys, k)
			b.totals = append(b.totals, r.ns[j])
			b.ttls = append(b.ttls, r.ttls[j])
		}
	}
	now := time.Now()
	if now.After(b.nextSweep) {
		for k, exp := range b.ttlSet {
			if now.After(exp) {
				delete(b.ttlSet, k)
			}
		}
		b.nextSweep = now.Add(time.Second)
	}
	c, err := s.conn()
	if err != nil {
		return fmt.Errorf("ratelimit: redis: %w", err)
	}
	b.cmds, b.incr = b.cmds[:0], b.incr[:0]
	for i, k := range b.keys {
		b.incr = append(b.incr, len(b.cmds))
		b.cmds = append(b.cmds, c.B().Incrby().Key(k).Increment(int64(b.totals[i])).Build())
		if _, ok := b.ttlSet[k]; !ok {
			b.cmds = append(b.cmds, c.B().Pexpire().Key(k).Milliseconds(b.ttls[i].Milliseconds()).Build())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	res := c.DoMulti(ctx, b.cmds...)
	cancel()
	for _, r := range res {
		if err := r.Error(); err != nil {
			return fmt.Errorf("ratelimit: redis: %w", err)
		}
	}
	b.vals = grow(b.vals, len(b.keys))
	for i := range b.keys {
		b.vals[i], _ = res[b.incr[i]].AsInt64()
	}
	for i, k := range b.keys {
		if _, ok := b.ttlSet[k]; !ok {
			b.ttlSet[k] = now.Add(b.ttls[i])
		}
	}
	b.acc = grow(b.acc, len(b.keys))
	clear(b.acc)
	for _, r := range b.reqs {
		for j, k := range r.keys {
			i := b.index[k]
			b.acc[i] += r.ns[j]
			r.counts[j] = uint64(b.vals[i]) - b.totals[i] + b.acc[i]
		}
	}
	return nil
}
