package telemetry

import "github.com/prometheus/client_golang/prometheus"

// MetricDescs lists the metrics the istio_* collector exports under the
// service's current dimensions (the collector is unchecked: its Describe
// sends nothing, as its labels follow the configuration).
func MetricDescs(s *Service) []*prometheus.Desc {
	d := s.metrics.state.Load().descs
	return []*prometheus.Desc{d.requests, d.duration, d.reqSize, d.respSize, d.sent, d.received, d.opened, d.closed,
		d.seriesGauge, d.maxGauge, d.overflowed, d.evicted}
}
