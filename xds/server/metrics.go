package server

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	connected   prometheus.Gauge
	pushes      *prometheus.CounterVec
	pushLatency prometheus.Histogram
	nacks       *prometheus.CounterVec
	builds      prometheus.Counter
	buildErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bowline_xds_connected_proxies", Help: "Proxies with at least one open xDS stream.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bowline_xds_pushes_total", Help: "New resource versions handed to proxies, by xDS type.",
		}, []string{"type"}),
		pushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bowline_xds_push_latency_seconds",
			Help:    "Time from a change reaching the server until a proxy ACKs the resulting version.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bowline_xds_nacks_total", Help: "Responses rejected by proxies, by xDS type.",
		}, []string{"type"}),
		builds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bowline_xds_builds_total", Help: "Proxy configurations translated (proxies sharing a configuration count once).",
		}),
		buildErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bowline_xds_build_errors_total", Help: "Translations that failed; the proxy keeps its previous configuration.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.pushes, m.pushLatency, m.nacks, m.builds, m.buildErrors)
	}
	return m
}
