package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const ordersLimits = `
rate_limit "orders" {
  global {
    requests = 1000
    per      = "1h"
  }
}
rate_limit "tenants" {
  global {
    requests = 1000
    per      = "1h"
    by       = ["request.headers[\"x-tenant\"]"]
  }
}
rate_limit "small" {
  on_error = "deny"
  global {
    requests = 3
    per      = "10s"
    by       = ["source.service", "request.path"]
  }
}
rate_limit "api" {
  global {
    requests = 2
    per      = "1m"
    match {
      methods = ["POST"]
    }
  }
  global {
    requests = 5
    per      = "1m"
  }
}
`

func newTestServer(t testing.TB, src string, store func(now func() time.Time) Store) (*Server, *fakeClock, *prometheus.Registry) {
	t.Helper()
	clk := newClock()
	reg := prometheus.NewRegistry()
	var st Store
	if store != nil {
		st = store(clk.Now)
	}
	s := NewServer(Options{Store: st, Now: clk.Now, Registerer: reg})
	s.Update(parseConfig(t, src))
	return s, clk, reg
}

// 16 concurrent callers against 1,000 per hour are admitted exactly 1,000
// times; with by, each distinct value gets its own 1,000.
func TestExactUnderConcurrencyMemory(t *testing.T) {
	s, _, reg := newTestServer(t, ordersLimits, nil)
	addr, _ := serve(t, s)
	cl := dial(t, addr)
	got := hammer(t, []rlsv3.RateLimitServiceClient{cl}, 16, 3000, func(int) *rlsv3.RateLimitRequest {
		return request(desc("destination", "default/orders"))
	})
	if got != 1000 {
		t.Fatalf("admitted %d of 3000 against a limit of 1000", got)
	}
	if v := testutil.ToFloat64(s.m.decisions.WithLabelValues("default/orders/0", ResultOK)); v != 1000 {
		t.Fatalf("ok decisions = %v", v)
	}
	if v := testutil.ToFloat64(s.m.decisions.WithLabelValues("default/orders/0", ResultOverLimit)); v != 2000 {
		t.Fatalf("over_limit decisions = %v", v)
	}
	if n, err := testutil.GatherAndCount(reg, "bowline_policyd_ratelimit_store_duration_seconds"); err != nil || n != 1 {
		t.Fatalf("store latency series = %d, %v", n, err)
	}

	tenants := []string{"acme", "globex", "initech", "umbrella"}
	got = hammer(t, []rlsv3.RateLimitServiceClient{cl}, 16, 8000, func(i int) *rlsv3.RateLimitRequest {
		return request(desc("destination", "default/tenants", "header:x-tenant", tenants[i%len(tenants)]))
	})
	if got != 4000 {
		t.Fatalf("admitted %d for 4 tenants at 1000 each", got)
	}
}

func TestResponse(t *testing.T) {
	s, clk, _ := newTestServer(t, ordersLimits, nil)
	ctx := context.Background()
	clk.Advance(4 * time.Second) // 6s left in the 10s window
	call := func(path string) *rlsv3.RateLimitResponse {
		t.Helper()
		resp, err := s.ShouldRateLimit(ctx, request(desc("destination", "default/small", "source", "default/web", "path", path)))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := call("/orders?page=1")
	st := resp.GetStatuses()[0]
	if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || st.GetLimitRemaining() != 2 {
		t.Fatalf("first response = %v", resp)
	}
	if l := st.GetCurrentLimit(); l.GetName() != "default/small/0" || l.GetRequestsPerUnit() != 3 ||
		l.GetUnit() != rlsv3.RateLimitResponse_RateLimit_SECOND || l.GetUnitMultiplier().GetValue() != 10 {
		t.Fatalf("current limit = %v", l)
	}
	if st.GetDurationUntilReset().AsDuration() != 6*time.Second {
		t.Fatalf("reset in %v", st.GetDurationUntilReset().AsDuration())
	}
	headers := map[string]string{}
	for _, h := range resp.GetResponseHeadersToAdd() {
		headers[h.GetKey()] = h.GetValue()
	}
	if fmt.Sprint(headers) != "map[x-ratelimit-limit:3, 3;w=10 x-ratelimit-remaining:2 x-ratelimit-reset:6]" {
		t.Fatalf("headers = %v", headers)
	}
	// The query string is not part of the path: the same counter.
	call("/orders?page=2")
	if r := call("/orders"); r.GetStatuses()[0].GetLimitRemaining() != 0 || r.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Fatalf("third response = %v", r)
	}
	if r := call("/orders"); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || r.GetStatuses()[0].GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("fourth response = %v", r)
	}
	if v := testutil.ToFloat64(s.m.cached); v != 1 {
		t.Fatalf("answered from the over-limit cache %v times, want 1", v)
	}
	// Another path has its own counter.
	if r := call("/payments"); r.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Fatalf("other path = %v", r)
	}
	// The next window starts afresh.
	clk.Advance(6 * time.Second)
	if r := call("/orders"); r.GetOverallCode() != rlsv3.RateLimitResponse_OK || r.GetStatuses()[0].GetLimitRemaining() != 2 {
		t.Fatalf("next window = %v", r)
	}
}

// A limit with a match and a catch-all with the same keys are told apart by
// the number of descriptors.
func TestMatchedAndCatchAll(t *testing.T) {
	s, _, _ := newTestServer(t, ordersLimits, nil)
	ctx := context.Background()
	d := desc("destination", "default/api")
	post := func() *rlsv3.RateLimitResponse {
		resp, err := s.ShouldRateLimit(ctx, request(d, d)) // both limits apply
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	get := func() *rlsv3.RateLimitResponse {
		resp, err := s.ShouldRateLimit(ctx, request(d)) // only the catch-all
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	r := post()
	if r.GetStatuses()[0].GetCurrentLimit().GetName() != "default/api/0" || r.GetStatuses()[1].GetCurrentLimit().GetName() != "default/api/1" {
		t.Fatalf("statuses = %v", r.GetStatuses())
	}
	if lim := headerOf(r, HeaderLimit); lim != "2, 2;w=60, 5;w=60" {
		t.Fatalf("x-ratelimit-limit = %q", lim)
	}
	post()
	if r := post(); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || r.GetStatuses()[1].GetCode() != rlsv3.RateLimitResponse_OK {
		t.Fatalf("third POST = %v", r)
	}
	// GETs count against the catch-all only: 3 POSTs used 3 of its 5.
	if r := get(); r.GetStatuses()[0].GetCurrentLimit().GetName() != "default/api/1" || r.GetStatuses()[0].GetLimitRemaining() != 1 {
		t.Fatalf("GET = %v", r)
	}
	get()
	if r := get(); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("GET over the catch-all = %v", r)
	}
}

func headerOf(r *rlsv3.RateLimitResponse, name string) string {
	for _, h := range r.GetResponseHeadersToAdd() {
		if h.GetKey() == name {
			return h.GetValue()
		}
	}
	return ""
}

func TestUnknownAndUnconfigured(t *testing.T) {
	ctx := context.Background()
	s := NewServer(Options{})
	if _, err := s.ShouldRateLimit(ctx, request(desc("destination", "default/orders"))); status.Code(err) != codes.Unavailable {
		t.Fatalf("before any configuration: %v", err)
	}
	s, _, _ = newTestServer(t, ordersLimits, nil)
	for _, req := range []*rlsv3.RateLimitRequest{
		request(desc("destination", "default/nobody")),
		request(desc("destination", "default/orders", "path", "/x")), // keys of no limit
		request(desc("generic_key", "x")),
		{Domain: "other", Descriptors: request(desc("destination", "default/orders")).Descriptors},
	} {
		resp, err := s.ShouldRateLimit(ctx, req)
		if err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || len(resp.GetStatuses()) != 1 ||
			resp.GetStatuses()[0].GetCurrentLimit() != nil || len(resp.GetResponseHeadersToAdd()) != 0 {
			t.Fatalf("%v: %v, %v", req, resp, err)
		}
	}
	if v := testutil.ToFloat64(s.m.unknown); v != 4 {
		t.Fatalf("unknown descriptors = %v", v)
	}
}

func TestHitsAddend(t *testing.T) {
	s, _, _ := newTestServer(t, ordersLimits, nil)
	ctx := context.Background()
	req := request(desc("destination", "default/orders"))
	req.HitsAddend = 600
	if r, _ := s.ShouldRateLimit(ctx, req); r.GetOverallCode() != rlsv3.RateLimitResponse_OK || r.GetStatuses()[0].GetLimitRemaining() != 400 {
		t.Fatalf("600 hits = %v", r)
	}
	req.Descriptors[0].HitsAddend = wrapperspb.UInt64(0) // a look, no hit
	if r, _ := s.ShouldRateLimit(ctx, req); r.GetOverallCode() != rlsv3.RateLimitResponse_OK || r.GetStatuses()[0].GetLimitRemaining() != 400 {
		t.Fatalf("0 hits = %v", r)
	}
	req.Descriptors[0].HitsAddend = nil
	if r, _ := s.ShouldRateLimit(ctx, req); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("600 more hits = %v", r)
	}
}

// failingStore fails every Increment.
type failingStore struct{ err error }

func (f failingStore) Increment(context.Context, []Hit) error { return f.err }
func (f failingStore) Name() string                           { return "failing" }

// When the store fails, on_error decides, and the outage is logged once.
func TestOnError(t *testing.T) {
	var logs logBuffer
	clk := newClock()
	s := NewServer(Options{Store: failingStore{errors.New("connection refused")}, Now: clk.Now, Log: logs.logger()})
	s.Update(parseConfig(t, ordersLimits))
	ctx := context.Background()
	for range 5 {
		r, err := s.ShouldRateLimit(ctx, request(desc("destination", "default/orders")))
		if err != nil || r.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("on_error allow: %v, %v", r, err)
		}
		r, err = s.ShouldRateLimit(ctx, request(desc("destination", "default/small", "source", "default/web", "path", "/")))
		if err != nil || r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
			t.Fatalf("on_error deny: %v, %v", r, err)
		}
	}
	if n := logs.Count("does not answer"); n != 1 {
		t.Fatalf("outage logged %d times:\n%s", n, logs.buf.String())
	}
	if v := testutil.ToFloat64(s.m.storeErrors); v != 10 {
		t.Fatalf("store errors = %v", v)
	}
	if a, d := testutil.ToFloat64(s.m.decisions.WithLabelValues("default/orders/0", ResultErrorAllow)),
		testutil.ToFloat64(s.m.decisions.WithLabelValues("default/small/0", ResultErrorDeny)); a != 5 || d != 5 {
		t.Fatalf("error decisions: allow %v, deny %v", a, d)
	}
}

// Limits survive an update that keeps their ID; removed ones lose their
// series.
func TestUpdateKeepsCounters(t *testing.T) {
	s, _, reg := newTestServer(t, ordersLimits, nil)
	ctx := context.Background()
	for range 3 {
		s.ShouldRateLimit(ctx, request(desc("destination", "default/small", "source", "default/web", "path", "/")))
	}
	s.Update(parseConfig(t, strings.Replace(ordersLimits, `rate_limit "orders"`, `rate_limit "orders2"`, 1)))
	if r, _ := s.ShouldRateLimit(ctx, request(desc("destination", "default/small", "source", "default/web", "path", "/"))); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("after an update: %v", r)
	}
	if n := testutil.CollectAndCount(s.m.decisions); n != 5*4 {
		t.Fatalf("%d decision series for 5 limits", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == "default/orders/0" {
					t.Fatalf("a removed limit keeps its series: %v", m)
				}
			}
		}
	}
	if got := testutil.ToFloat64(s.m.limits); got != 5 {
		t.Fatalf("limits gauge = %v", got)
	}
}

func TestMemoryStoreForgetsExpiredCounters(t *testing.T) {
	clk := newClock()
	m := NewMemoryStore(clk.Now)
	// 20 windows of 1s, 100 counters each: the expired ones are dropped
	// as the store is used, so it holds about one window's counters.
	for w := range 20 {
		for i := range 100 {
			hits := []Hit{{Key: fmt.Appendf(nil, "k%d/%d", i, w), N: 1, Expires: clk.Now().Add(time.Second)}}
			if err := m.Increment(context.Background(), hits); err != nil || hits[0].Count != 1 {
				t.Fatalf("%v %v", hits, err)
			}
		}
		clk.Advance(2 * time.Second)
	}
	if n := m.Len(); n > 300 {
		t.Fatalf("%d counters kept after 20 windows of 100", n)
	}
}

// Raising a limit admits a counter that was over the old one at once (the
// over-limit cache does not outlive the limits it was built for).
func TestRaisedLimitAdmits(t *testing.T) {
	s, _, _ := newTestServer(t, ordersLimits, nil)
	ctx := context.Background()
	req := request(desc("destination", "default/small", "source", "default/web", "path", "/"))
	for range 4 {
		s.ShouldRateLimit(ctx, req)
	}
	if r, _ := s.ShouldRateLimit(ctx, req); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("over 3 per 10s: %v", r)
	}
	s.Update(parseConfig(t, strings.Replace(ordersLimits, "requests = 3\n", "requests = 10\n", 1)))
	// 3 counted so far (refusals answered from the over-limit cache are
	// not counted): 7 more are admitted.
	for i := range 7 {
		if r, _ := s.ShouldRateLimit(ctx, req); r.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("request %d after raising the limit to 10: %v", i, r)
		}
	}
	if r, _ := s.ShouldRateLimit(ctx, req); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("over 10: %v", r)
	}
}
