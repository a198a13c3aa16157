package ratelimit

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	dto "github.com/prometheus/client_model/go"

	"github.com/bowlinemesh/bowline/policy/ratelimit/redistest"
)

const benchLimits = `
rate_limit "orders" {
  global {
    requests = 4000000000
    per      = "1h"
    by       = ["request.headers[\"x-user\"]"]
  }
}
`

// BenchmarkShouldRateLimit decides requests with 16 concurrent callers,
// without gRPC: what policyd adds to a do-nothing server. Run it with
// -cpu 1 (and, for Redis, taskset -c 0 to share the core with it).
func BenchmarkShouldRateLimit(b *testing.B) {
	for _, store := range []string{"memory", "redis"} {
		for _, values := range []int{1, 1000} {
			b.Run(store+"/"+strconv.Itoa(values), func(b *testing.B) {
				clk := newClock()
				o := Options{Now: clk.Now}
				if store == "redis" {
					rs := redistest.Start(b)
					st := NewRedisStore(RedisOptions{Addr: rs.Addr(), Now: clk.Now, Flushers: benchFlushers})
					defer st.Close()
					o.Store = st
				}
				s := NewServer(o)
				s.Update(parseConfig(b, benchLimits))
				reqs := make([]*rlsv3.RateLimitRequest, values)
				for i := range reqs {
					reqs[i] = request(desc("destination", "default/orders", "header:x-user", "u"+strconv.Itoa(i)))
				}
				var n atomic.Int64
				b.SetParallelism(16)
				b.ReportAllocs()
				b.ResetTimer()
				if rs, ok := o.Store.(*RedisStore); ok {
					defer func() {
						m := &dto.Metric{}
						_ = rs.pipelines.Write(m)
						b.ReportMetric(m.GetHistogram().GetSampleSum()/float64(m.GetHistogram().GetSampleCount()), "requests/pipeline")
					}()
				}
				b.RunParallel(func(pb *testing.PB) {
					ctx := context.Background()
					for pb.Next() {
						i := n.Add(1)
						resp, err := s.ShouldRateLimit(ctx, reqs[int(i)%len(reqs)])
						if err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
							b.Fatalf("%v %v", resp, err)
						}
					}
				})
			})
		}
	}
}

var benchFlushers = 1
