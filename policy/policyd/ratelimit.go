package policyd

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bowlinemesh/bowline/policy/ratelimit"
)

// newRateLimit builds the rate limit service (RLS v3, package ratelimit):
// its counters in this process, or in Redis at redisAddr, shared by every
// replica given the same one. The returned function stops the store.
func newRateLimit(redisAddr string, log *slog.Logger, reg prometheus.Registerer) (*ratelimit.Server, func()) {
	var store ratelimit.Store
	stop := func() {}
	if redisAddr != "" {
		rs := ratelimit.NewRedisStore(ratelimit.RedisOptions{Addr: redisAddr, Registerer: reg})
		store, stop = rs, func() { _ = rs.Close() }
		log.Info("rate limit counters in Redis", "addr", redisAddr)
	}
	return ratelimit.NewServer(ratelimit.Options{Store: store, Log: log, Registerer: reg}), stop
}
