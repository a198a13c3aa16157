// Package ratelimit is policyd's rate limit service: Envoy's RLS v3
// ShouldRateLimit, deciding the global limits of the configuration's
// rate_limit blocks, with the counters in a Store (in memory for one
// policyd, Redis for several replicas that share the counters).
//
// # The wire contract
//
// Sidecars send requests in the domain "bowline" (config.RateLimitDomain).
// One descriptor is sent per global limit that applies to a request, its
// entries in this order:
//
//	destination = <namespace>/<service>     the service the limit is about
//	then one entry per by attribute, in the order written:
//	source      = <namespace>/<service>     source.service (from the caller's mTLS certificate)
//	principal   = <SPIFFE ID>               source.principal
//	header:<name> = <value>                 request.headers["<name>"]
//	path        = <:path>                   request.path (policyd leaves out the query string)
//
// A descriptor is matched to the limits of its destination whose by list
// gives the same keys. Limits with the same keys are told apart by count
// (config.checkDistinguishable allows one of them to have a match): when as
// many descriptors arrive as there are such limits, each counts one; when
// one fewer arrives, the limit with a match did not apply. A descriptor that
// matches no limit is answered OK without a limit (a sidecar and policyd may
// briefly hold different configurations).
//
// # The algorithm: fixed windows
//
// A limit of N requests per P keeps one counter per distinct descriptor
// value in windows of length P aligned to the Unix epoch (so replicas agree
// on windows without talking to each other). A request adds its hits to the
// counter of the current window and is admitted when the counter, after the
// addition, is at most N. The addition is atomic (a mutex in memory, INCRBY
// in Redis), so concurrent callers and replicas admit exactly N per window:
// no over-admission within a window, whatever the concurrency.
//
// The error bound is the fixed window's: in any interval of length P that
// straddles a window boundary up to 2N requests can be admitted (N at the
// end of one window, N at the start of the next); over any K consecutive
// windows at most K·N. When the store cannot answer, on_error decides
// (allow: admitted and not counted; deny: refused).
//
// A counter that reached its limit stays over it until its window ends, so
// the server remembers such keys (overLimit) and answers them without the
// store: exact, and it keeps a flood of refused requests away from Redis.
package ratelimit
