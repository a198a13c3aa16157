package ratelimit

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bowlinemesh/bowline/config"
)

// The standard rate limit response headers (IETF draft
// ratelimit-headers-03, as Envoy writes them).
const (
	HeaderLimit     = "x-ratelimit-limit"
	HeaderRemaining = "x-ratelimit-remaining"
	HeaderReset     = "x-ratelimit-reset"
)

// Options configure a Server.
type Options struct {
	// Store keeps the counters (nil: a MemoryStore on Now).
	Store Store
	// Log receives one line when the store becomes unreachable and one when
	// it is back (nil: discarded).
	Log *slog.Logger
	// Registerer takes the metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Now is the clock windows are cut by (nil: time.Now).
	Now func() time.Time
}

// Server is the RLS v3 rate limit service.
type Server struct {
	rlsv3.UnimplementedRateLimitServiceServer
	store  Store
	log    *slog.Logger
	now    func() time.Time
	limits atomic.Pointer[Limits]
	cfg    atomic.Pointer[config.Config]
	over   atomic.Pointer[overLimit]
	m      *metrics

	// Store health: one log line per outage.
	down      atomic.Bool
	healthMu  sync.Mutex
	downSince time.Time
	failed    uint64
}

var _ rlsv3.RateLimitServiceServer = (*Server)(nil)

// NewServer returns a server with no limits: it answers UNAVAILABLE (and
// Envoy applies on_error) until Update gives it a configuration.
func NewServer(o Options) *Server {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Store == nil {
		o.Store = NewMemoryStore(o.Now)
	}
	s := &Server{store: o.Store, log: o.Log, now: o.Now, m: newMetrics(o.Store.Name(), o.Registerer)}
	s.over.Store(newOverLimit())
	return s
}

// Register serves the rate limit service on g.
func (s *Server) Register(g *grpc.Server) { rlsv3.RegisterRateLimitServiceServer(g, s) }

// Update puts the global limits of a configuration in force. Counters are
// kept: a limit keeps its counters as long as its ID stays. A nil
// configuration, or the one already in force, changes nothing.
func (s *Server) Update(cfg *config.Config) {
	if cfg == nil || s.cfg.Swap(cfg) == cfg {
		return
	}
	l := Compile(cfg)
	keep := map[string]bool{}
	for _, r := range l.rules {
		r.c = s.m.countersFor(r.ID)
		keep[r.ID] = true
	}
	// Counters over their limit are forgotten: the limit may have been
	// raised (the store keeps the counts, so they are found again).
	s.over.Store(newOverLimit())
	if old := s.limits.Swap(l); old != nil {
		for _, r := range old.rules {
			if !keep[r.ID] {
				s.m.forget(r.ID)
			}
		}
	}
	s.m.limits.Set(float64(len(l.rules)))
}

// Limits returns the limits in force (nil before the first Update).
func (s *Server) Limits() *Limits { return s.limits.Load() }

// StoreName names the counter store.
func (s *Server) StoreName() string { return s.store.Name() }

// scratch is the per-request working memory, pooled.
type scratch struct {
	groups []*group
	rules  []*Rule
	hits   []Hit
	hitOf  []int // descriptor of each hit
	keys   []byte
	ends   []int // end of each descriptor's key in keys
	over   []bool
}

var scratchPool = sync.Pool{New: func() any { return &scratch{} }}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// ShouldRateLimit implements RLS v3.
func (s *Server) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	lim := s.limits.Load()
	if lim == nil {
		return nil, status.Error(codes.Unavailable, "policyd has no configuration yet")
	}
	descs := req.GetDescriptors()
	n := len(descs)
	out := newResponse(n)
	resp, statuses, resets := &out.resp, out.statuses, out.resets
	if req.GetDomain() != config.RateLimitDomain {
		s.m.unknown.Add(float64(n))
		return resp, nil
	}

	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	sc.groups, sc.rules = grow(sc.groups, n), grow(sc.rules, n)
	sc.ends, sc.over = grow(sc.ends, n), grow(sc.over, n)
	sc.hits, sc.hitOf, sc.keys = sc.hits[:0], sc.hitOf[:0], sc.keys[:0]
	lim.resolve(descs, sc.groups, sc.rules)
	over := s.over.Load()

	now := s.now()
	nowNs := now.UnixNano()
	addend := uint64(req.GetHitsAddend())
	if addend == 0 {
		addend = 1
	}
	known := 0
	for i, r := range sc.rules {
		sc.over[i] = false
		if r == nil {
			s.m.unknown.Inc()
			sc.ends[i] = len(sc.keys)
			continue
		}
		known++
		sc.keys = r.appendKey(sc.keys, descs[i], nowNs/r.perNanos)
		sc.ends[i] = len(sc.keys)
	}
	start := 0
	for i, r := range sc.rules {
		key := sc.keys[start:sc.ends[i]]
		start = sc.ends[i]
		if r == nil {
			continue
		}
		if over.has(key, nowNs) {
			sc.over[i] = true
			s.m.cached.Inc()
			continue
		}
		hits := addend
		if h := descs[i].GetHitsAddend(); h != nil {
			hits = h.GetValue()
		}
		w := nowNs / r.perNanos
		sc.hits = append(sc.hits, Hit{Key: key, N: hits, Expires: time.Unix(0, (w+1)*r.perNanos)})
		sc.hitOf = append(sc.hitOf, i)
	}
	if known == 0 {
		return resp, nil
	}

	var err error
	if len(sc.hits) > 0 {
		t := time.Now()
		err = s.store.Increment(ctx, sc.hits)
		s.m.storeLatency.Observe(time.Since(t).Seconds())
		if err != nil {
			s.storeFailed(err)
		} else {
			s.storeOK()
		}
	}

	best, bestRemaining := -1, uint64(0)
	for i, r := range sc.rules {
		if r == nil {
			continue
		}
		st := &statuses[i]
		st.CurrentLimit = r.limit
		end := (nowNs/r.perNanos + 1) * r.perNanos
		untilReset := time.Duration(end - nowNs)
		resets[i] = durationpb.Duration{Seconds: int64(untilReset / time.Second), Nanos: int32(untilReset % time.Second)}
		st.DurationUntilReset = &resets[i]
		if sc.over[i] {
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			r.c.over.Inc()
			best, bestRemaining = pick(best, bestRemaining, i, 0)
		}
	}
	for j := range sc.hits {
		i := sc.hitOf[j]
		r, st, h := sc.rules[i], &statuses[i], &sc.hits[j]
		switch {
		case err != nil && r.OnError == config.OnErrorDeny:
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			r.c.errDeny.Inc()
		case err != nil:
			r.c.errAllow.Inc()
		case h.Count <= uint64(r.Requests) && (h.N > 0 || h.Count < uint64(r.Requests)):
			st.LimitRemaining = r.Requests - uint32(h.Count)
			r.c.ok.Inc()
			if h.Count >= uint64(r.Requests) {
				over.add(h.Key, h.Expires.UnixNano(), nowNs)
			}
			best, bestRemaining = pick(best, bestRemaining, i, uint64(st.LimitRemaining))
		default:
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			r.c.over.Inc()
			over.add(h.Key, h.Expires.UnixNano(), nowNs)
			best, bestRemaining = pick(best, bestRemaining, i, 0)
		}
	}
	for i := range statuses {
		if statuses[i].Code == rlsv3.RateLimitResponse_OVER_LIMIT {
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
			break
		}
	}
	if best >= 0 {
		resp.ResponseHeadersToAdd = s.headers(out, sc.rules, best, bestRemaining, statuses[best].DurationUntilReset)
	}
	return resp, nil
}

// pick keeps the descriptor with the least remaining.
func pick(best int, bestRemaining uint64, i int, remaining uint64) (int, uint64) {
	if best < 0 || remaining < bestRemaining {
		return i, remaining
	}
	return best, bestRemaining
}

// headers are the x-ratelimit-* headers of the most restrictive descriptor
// (draft-03: the limit first, then each limit's quota policy).
func (s *Server) headers(out *response, rules []*Rule, best int, remaining uint64, reset *durationpb.Duration) []*corev3.HeaderValue {
	limit := rules[best].header
	if slices.ContainsFunc(rules, func(r *Rule) bool { return r != nil && r != rules[best] }) {
		var seen []*Rule
		for _, r := range rules {
			if r != nil && !slices.Contains(seen, r) {
				seen = append(seen, r)
			}
		}
		b := strconv.AppendUint(nil, uint64(rules[best].Requests), 10)
		for _, r := range seen {
			b = append(b, ", "...)
			b = append(b, r.policy...)
		}
		limit = string(b)
	}
	secs := reset.GetSeconds()
	if reset.GetNanos() > 0 {
		secs++
	}
	hv := &out.headers
	hv[0].Key, hv[0].Value = HeaderLimit, limit
	hv[1].Key, hv[1].Value = HeaderRemaining, strconv.FormatUint(remaining, 10)
	hv[2].Key, hv[2].Value = HeaderReset, strconv.FormatInt(secs, 10)
	out.headerPtrs = [3]*corev3.HeaderValue{&hv[0], &hv[1], &hv[2]}
	return out.headerPtrs[:]
}

// response is one response with everything it points to, allocated at
// once (for one descriptor, the usual case, a single allocation).
type response struct {
	resp       rlsv3.RateLimitResponse
	statuses   []rlsv3.RateLimitResponse_DescriptorStatus
	resets     []durationpb.Duration
	headers    [3]corev3.HeaderValue
	headerPtrs [3]*corev3.HeaderValue
	one        struct {
		status [1]rlsv3.RateLimitResponse_DescriptorStatus
		ptr    [1]*rlsv3.RateLimitResponse_DescriptorStatus
		reset  [1]durationpb.Duration
	}
}

func newResponse(n int) *response {
	out := &response{}
	out.resp.OverallCode = rlsv3.RateLimitResponse_OK
	if n == 1 {
		out.one.ptr[0] = &out.one.status[0]
		out.statuses, out.resets, out.resp.Statuses = out.one.status[:], out.one.reset[:], out.one.ptr[:]
	} else {
		out.statuses = make([]rlsv3.RateLimitResponse_DescriptorStatus, n)
		out.resets = make([]durationpb.Duration, n)
		out.resp.Statuses = make([]*rlsv3.RateLimitResponse_DescriptorStatus, n)
		for i := range out.statuses {
			out.resp.Statuses[i] = &out.statuses[i]
		}
	}
	for i := range out.statuses {
		out.statuses[i].Code = rlsv3.RateLimitResponse_OK
	}
	return out
}

// storeFailed counts a failure and logs the start of an outage.
func (s *Server) storeFailed(err error) {
	s.m.storeErrors.Inc()
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	s.failed++
	if !s.down.Load() {
		s.down.Store(true)
		s.downSince = time.Now()
		s.log.Warn("ratelimit: the counter store does not answer; on_error decides until it does", "store", s.store.Name(), "err", err)
	}
}

// storeOK logs the end of an outage.
func (s *Server) storeOK() {
	if !s.down.Load() {
		return
	}
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	if s.down.Load() {
		s.down.Store(false)
		s.log.Info("ratelimit: the counter store answers again; counting resumed", "store", s.store.Name(),
			"outage", time.Since(s.downSince).Round(time.Millisecond), "requests_decided_by_on_error", s.failed)
		s.failed = 0
	}
}
