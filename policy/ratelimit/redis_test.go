package ratelimit

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/rueidis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/bowlinemesh/bowline/policy/ratelimit/redistest"
)

// redisServer is a policyd replica's rate limit server on a Redis store.
func redisServer(t testing.TB, addr string, clk *fakeClock, src string, logs *logBuffer) *Server {
	t.Helper()
	st := NewRedisStore(RedisOptions{Addr: addr, Now: clk.Now, ProbeInterval: 50 * time.Millisecond})
	t.Cleanup(func() { st.Close() })
	o := Options{Store: st, Now: clk.Now}
	if logs != nil {
		o.Log = logs.logger()
	}
	s := NewServer(o)
	s.Update(parseConfig(t, src))
	return s
}

func TestExactUnderConcurrencyRedis(t *testing.T) {
	rs := redistest.Start(t)
	clk := newClock()
	s := redisServer(t, rs.Addr(), clk, ordersLimits, nil)
	addr, _ := serve(t, s)
	cl := []rlsv3.RateLimitServiceClient{dial(t, addr)}
	got := hammer(t, cl, 16, 3000, func(int) *rlsv3.RateLimitRequest { return request(desc("destination", "default/orders")) })
	if got != 1000 {
		t.Fatalf("admitted %d of 3000 against a limit of 1000", got)
	}
	tenants := []string{"acme", "globex", "initech", "umbrella"}
	got = hammer(t, cl, 16, 8000, func(i int) *rlsv3.RateLimitRequest {
		return request(desc("destination", "default/tenants", "header:x-tenant", tenants[i%len(tenants)]))
	})
	if got != 4000 {
		t.Fatalf("admitted %d for 4 tenants at 1000 each", got)
	}

	// Every counter got a TTL: the end of its window, and a little more.
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rs.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	ctx := context.Background()
	keys, err := rc.Do(ctx, rc.B().Keys().Pattern("brl:*").Build()).AsStrSlice()
	if err != nil || len(keys) != 5 {
		t.Fatalf("keys = %q, %v", keys, err)
	}
	for _, k := range keys {
		ms, err := rc.Do(ctx, rc.B().Pttl().Key(k).Build()).AsInt64()
		ttl := time.Duration(ms) * time.Millisecond
		if err != nil || ttl <= time.Hour-time.Minute || ttl > time.Hour+ttlSlack {
			t.Fatalf("TTL of %q = %v, %v", k, ttl, err)
		}
	}
}

// Two replicas on one Redis: callers spread over both are admitted the
// limit between them.
func TestReplicasShareCounters(t *testing.T) {
	rs := redistest.Start(t)
	clk := newClock()
	a1, _ := serve(t, redisServer(t, rs.Addr(), clk, ordersLimits, nil))
	a2, _ := serve(t, redisServer(t, rs.Addr(), clk, ordersLimits, nil))
	clients := []rlsv3.RateLimitServiceClient{dial(t, a1), dial(t, a2)}
	got := hammer(t, clients, 16, 3000, func(int) *rlsv3.RateLimitRequest { return request(desc("destination", "default/orders")) })
	if got < 1000 || got > 1010 {
		t.Fatalf("two replicas admitted %d against a limit of 1000", got)
	}
	tenants := []string{"acme", "globex"}
	got = hammer(t, clients, 16, 5000, func(i int) *rlsv3.RateLimitRequest {
		return request(desc("destination", "default/tenants", "header:x-tenant", tenants[i%len(tenants)]))
	})
	if got < 2000 || got > 2020 {
		t.Fatalf("two replicas admitted %d for 2 tenants at 1000 each", got)
	}
}

// Redis killed mid-run: on_error decides, the outage is logged once, and
// nothing piles up; Redis back: counting resumes without a restart.
func TestRedisOutage(t *testing.T) {
	rs := redistest.Start(t)
	clk := newClock()
	var logs logBuffer
	s := redisServer(t, rs.Addr(), clk, ordersLimits, &logs)
	st := s.store.(*RedisStore)
	ctx := context.Background()
	orders := func() rlsv3.RateLimitResponse_Code { // on_error = "allow"
		r, err := s.ShouldRateLimit(ctx, request(desc("destination", "default/orders")))
		if err != nil {
			t.Fatal(err)
		}
		return r.GetOverallCode()
	}
	small := func(path string) rlsv3.RateLimitResponse_Code { // on_error = "deny", 3 per 10s
		r, err := s.ShouldRateLimit(ctx, request(desc("destination", "default/small", "source", "default/web", "path", path)))
		if err != nil {
			t.Fatal(err)
		}
		return r.GetOverallCode()
	}
	if orders() != rlsv3.RateLimitResponse_OK || small("/a") != rlsv3.RateLimitResponse_OK {
		t.Fatal("not admitted with Redis up")
	}

	rs.Kill()
	t0 := time.Now()
	for range 10 { // the store learns that Redis is down
		orders()
	}
	before := runtime.NumGoroutine()
	// batch makes 16 concurrent callers decide perCaller requests each,
	// half for orders, half for small with a path of their own (distinct
	// paths when distinct is set), and checks that on_error decided all.
	batch := func(perCaller int, distinct bool) {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex
		codes := map[string]int{}
		for c := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perCaller {
					var k string
					if i%2 == 0 {
						k = fmt.Sprintf("orders=%v", orders())
					} else if distinct {
						k = fmt.Sprintf("small=%v", small(fmt.Sprintf("/p%d/%d", c, i)))
					} else {
						k = fmt.Sprintf("small=%v", small(fmt.Sprintf("/p%d", c)))
					}
					mu.Lock()
					codes[k]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if codes["orders=OK"] != 16*perCaller/2 || codes["small=OVER_LIMIT"] != 16*perCaller/2 || len(codes) != 2 {
			t.Fatalf("decisions during the outage: %v", codes)
		}
	}
	batch(300, false)
	t.Logf("outage calls took %v", time.Since(t0))
	if n := logs.Count("does not answer"); n != 1 {
		t.Fatalf("outage logged %d times:\n%s", n, logs.buf.String())
	}
	// Nothing lasting was started (connection attempts in flight end).
	eventually(t, func() bool { return runtime.NumGoroutine() <= before+2 })
	if q := len(st.queue); q != 0 {
		t.Fatalf("%d requests left queued", q)
	}
	if v := testutil.ToFloat64(s.m.storeErrors); v != 10+16*300 {
		t.Fatalf("store errors = %v, want %d", v, 10+16*300)
	}

	// Nor does memory grow while the outage lasts: after the batch above
	// (the warm-up), ten times as many decisions, every small one with a
	// path never seen before, leave the live heap where it was. A leak of
	// 100 bytes a decision would add 4.8 MB.
	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // the second cycle frees what the first one's finalizers released
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	heap0 := heap()
	batch(3000, true)
	heap1 := heap()
	t.Logf("live heap during the outage: %d KiB after %d decisions, %d KiB after %d more", heap0>>10, 10+16*300, heap1>>10, 16*3000)
	if heap1 > heap0 && heap1-heap0 > 4<<20 {
		t.Fatalf("live heap grew by %d KiB over %d decisions during the outage", (heap1-heap0)>>10, 16*3000)
	}
	if n := logs.Count("does not answer"); n != 1 {
		t.Fatalf("outage logged %d times:\n%s", n, logs.buf.String())
	}
	eventually(t, func() bool { return runtime.NumGoroutine() <= before+2 })
	if q := len(st.queue); q != 0 {
		t.Fatalf("%d requests left queued", q)
	}
	if v := testutil.ToFloat64(s.m.storeErrors); v != 10+16*3300 {
		t.Fatalf("store errors = %v, want %d", v, 10+16*3300)
	}

	rs.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for small("/back") != rlsv3.RateLimitResponse_OK {
		if time.Now().After(deadline) {
			t.Fatal("counting did not resume within 10s of Redis coming back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := logs.Count("answers again"); n != 1 {
		t.Fatalf("recovery logged %d times:\n%s", n, logs.buf.String())
	}
	// Limits are enforced again: 3 per 10s. (A fresh path: a request that
	// timed out while Redis came back may have been counted.)
	got := []rlsv3.RateLimitResponse_Code{small("/fresh"), small("/fresh"), small("/fresh"), small("/fresh")}
	if fmt.Sprint(got) != "[OK OK OK OVER_LIMIT]" {
		t.Fatalf("after the outage: %v\n%s", got, logs.buf.String())
	}
}

// A replica killed mid-load: the other keeps answering, with the counts
// the killed one left in Redis.
func TestReplicaKilledMidLoad(t *testing.T) {
	rs := redistest.Start(t)
	clk := newClock()
	a1, stop1 := serve(t, redisServer(t, rs.Addr(), clk, ordersLimits, nil))
	a2, _ := serve(t, redisServer(t, rs.Addr(), clk, ordersLimits, nil))
	// One client over both replicas, as Envoy's cluster lists every replica.
	r := manual.NewBuilderWithScheme("replicas")
	r.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: a1}, {Addr: a2}}})
	cl := dial(t, r.Scheme()+":///policyd", grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin":{}}]}`))

	var (
		mu                 sync.Mutex
		admitted, failed   int
		afterKill, okAfter int
		killed             bool
		wg                 sync.WaitGroup
		total              = 3000
		next               = make(chan int, total)
	)
	for i := range total {
		next <- i
	}
	close(next)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if i == total/3 {
					stop1() // mid-load
					mu.Lock()
					killed = true
					mu.Unlock()
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := cl.ShouldRateLimit(ctx, request(desc("destination", "default/orders")))
				cancel()
				mu.Lock()
				if killed {
					afterKill++
				}
				switch {
				case err != nil:
					failed++
				case resp.GetOverallCode() == rlsv3.RateLimitResponse_OK:
					admitted++
					if killed {
						okAfter++
					}
				default:
					if killed {
						okAfter++
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// Calls in flight on the killed replica may fail (Envoy applies
	// on_error to them); every later one is answered by the other.
	if failed > 16 {
		t.Fatalf("%d calls failed after one replica of two was killed", failed)
	}
	if okAfter < afterKill-16 {
		t.Fatalf("only %d of %d calls after the kill were answered", okAfter, afterKill)
	}
	if admitted < 1000-failed || admitted > 1010 {
		t.Fatalf("admitted %d against a limit of 1000 (%d calls failed)", admitted, failed)
	}
}

// A Redis that accepts connections and never answers: requests wait for
// the timeout only while the store learns it is down, then fail at once.
func TestRedisHangs(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	clk := newClock()
	st := NewRedisStore(RedisOptions{Addr: lis.Addr().String(), Now: clk.Now, Timeout: 100 * time.Millisecond})
	defer st.Close()
	s := NewServer(Options{Store: st, Now: clk.Now})
	s.Update(parseConfig(t, ordersLimits))
	for range 10 { // the store learns that Redis does not answer
		s.ShouldRateLimit(context.Background(), request(desc("destination", "default/orders")))
	}
	before := runtime.NumGoroutine()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				r, err := s.ShouldRateLimit(context.Background(), request(desc("destination", "default/orders")))
				if err != nil || r.GetOverallCode() != rlsv3.RateLimitResponse_OK {
					t.Errorf("on_error allow: %v %v", r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Most decisions never waited for Redis: the store failed them at once.
	if q := st.queued.Load(); q > 3200/2 {
		t.Fatalf("%d of 3200 requests waited for a Redis that does not answer", q)
	}
	// Nothing lasting was started (connection attempts in flight end).
	eventually(t, func() bool { return runtime.NumGoroutine() <= before+2 })
}

// policyd may start before Redis: on_error decides until Redis answers,
// then counting starts.
func TestRedisDownAtStart(t *testing.T) {
	rs := redistest.Start(t)
	rs.Kill()
	clk := newClock()
	s := redisServer(t, rs.Addr(), clk, ordersLimits, nil)
	ctx := context.Background()
	small := func(path string) rlsv3.RateLimitResponse_Code {
		r, err := s.ShouldRateLimit(ctx, request(desc("destination", "default/small", "source", "default/web", "path", path)))
		if err != nil {
			t.Fatal(err)
		}
		return r.GetOverallCode()
	}
	if small("/") != rlsv3.RateLimitResponse_OVER_LIMIT { // on_error = "deny"
		t.Fatal("decided without Redis")
	}
	rs.Restart()
	eventually(t, func() bool { return small("/") == rlsv3.RateLimitResponse_OK })
	if got := []rlsv3.RateLimitResponse_Code{small("/a"), small("/a"), small("/a"), small("/a")}; fmt.Sprint(got) != "[OK OK OK OVER_LIMIT]" {
		t.Fatalf("once Redis answers: %v", got)
	}
}

// eventually waits (at most 10s) for f to hold.
func eventually(t *testing.T, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
