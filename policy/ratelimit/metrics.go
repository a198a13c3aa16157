package ratelimit

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Results of a decision, as the decisions metric labels them.
const (
	ResultOK         = "ok"
	ResultOverLimit  = "over_limit"
	ResultErrorAllow = "error_allow" // the store failed; on_error = "allow"
	ResultErrorDeny  = "error_deny"  // the store failed; on_error = "deny"
)

type metrics struct {
	decisions    *prometheus.CounterVec
	unknown      prometheus.Counter
	storeLatency prometheus.Observer
	storeErrors  prometheus.Counter
	cached       prometheus.Counter
	limits       prometheus.Gauge
}

// ruleCounters are a limit's decision counters.
type ruleCounters struct {
	ok, over, errAllow, errDeny prometheus.Counter
}

func newMetrics(store string, reg prometheus.Registerer) *metrics {
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bowline_policyd_ratelimit_decisions_total",
		Help: "Rate limit decisions per descriptor, by limit (its ID, <namespace>/<service>/<index>) and result (ok, over_limit, error_allow, error_deny).",
	}, []string{"limit", "result"})
	unknown := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bowline_policyd_ratelimit_unknown_descriptors_total",
		Help: "Descriptors that matched no limit (answered OK): a sidecar and policyd with different configurations, or another domain.",
	})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "bowline_policyd_ratelimit_store_duration_seconds",
		Help:    "Time the counter store took to count one request's descriptors.",
		Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1},
	}, []string{"store"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bowline_policyd_ratelimit_store_errors_total",
		Help: "Requests the counter store could not count (on_error decided them).",
	}, []string{"store"})
	cached := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bowline_policyd_ratelimit_over_limit_cached_total",
		Help: "Descriptors refused without asking the store: their counter had already reached its limit in this window.",
	})
	limits := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "bowline_policyd_ratelimit_limits",
		Help: "Global rate limits in force.",
	})
	if reg != nil {
		reg.MustRegister(decisions, unknown, latency, errs, cached, limits)
	}
	return &metrics{
		decisions: decisions, unknown: unknown, storeLatency: latency.WithLabelValues(store),
		storeErrors: errs.WithLabelValues(store), cached: cached, limits: limits,
	}
}

func (m *metrics) countersFor(id string) ruleCounters {
	return ruleCounters{
		ok:       m.decisions.WithLabelValues(id, ResultOK),
		over:     m.decisions.WithLabelValues(id, ResultOverLimit),
		errAllow: m.decisions.WithLabelValues(id, ResultErrorAllow),
		errDeny:  m.decisions.WithLabelValues(id, ResultErrorDeny),
	}
}

// forget drops the series of a limit no longer in force.
func (m *metrics) forget(id string) {
	for _, r := range []string{ResultOK, ResultOverLimit, ResultErrorAllow, ResultErrorDeny} {
		m.decisions.DeleteLabelValues(id, r)
	}
}
