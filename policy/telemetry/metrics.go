package telemetry

import (
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bowlinemesh/bowline/config"
)

// The metrics are Istio's standard metrics, with its names, labels and
// buckets, so that Istio's Grafana dashboards and Kiali's queries work
// unchanged. They are kept in a bounded set of series: one series is one
// label set (of a request metric or of a TCP metric) with all its values;
// past max_series, new label sets fold into one overflow series per kind
// whose labels all read "overflow", and bowline_telemetry_overflow_total
// counts the reports folded. Series idle for seriesIdle are forgotten.

// OverflowValue is every label of the overflow series.
const OverflowValue = "overflow"

// Istio's buckets: milliseconds for durations, bytes for sizes.
var (
	durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	sizeBuckets     = []float64{1, 10, 100, 1000, 10000, 100000, 1000000, 10000000}
)

// seriesIdle is how long a series is kept without reports.
const seriesIdle = 15 * time.Minute

const numShards = 64

// histogram is a fixed-bucket histogram updated with atomics. sum is kept
// in thousandths of the unit, as an integer.
type histogram struct {
	buckets  []atomic.Uint64 // one per upper bound, not cumulative
	count    atomic.Uint64
	sumMilli atomic.Uint64
}

func newHistogram(n int) histogram { return histogram{buckets: make([]atomic.Uint64, n+1)} }

func (h *histogram) observe(bounds []float64, v float64) {
	i := bucketIndex(bounds, v)
	h.buckets[i].Add(1)
	h.count.Add(1)
	if v > 0 {
		h.sumMilli.Add(uint64(math.Round(v * 1000)))
	}
}

// bucketIndex is the first bound v fits under (len(bounds) for +Inf).
func bucketIndex(bounds []float64, v float64) int {
	for i, b := range bounds {
		if v <= b {
			return i
		}
	}
	return len(bounds)
}

func (h *histogram) snapshot(bounds []float64) (count uint64, sum float64, cum map[float64]uint64) {
	cum = make(map[float64]uint64, len(bounds))
	var c uint64
	for i, b := range bounds {
		c += h.buckets[i].Load()
		cum[b] = c
	}
	return h.count.Load(), float64(h.sumMilli.Load()) / 1000, cum
}

// series is one label set and its values.
type series struct {
	kind     kind
	labels   []string // standard labels, then the dimensions
	next     *series  // same hash
	hash     uint64
	lastSeen atomic.Int64 // unix seconds
	// HTTP
	requests          atomic.Uint64
	duration          histogram
	reqSize, respSize histogram
	// TCP
	sent, received, opened, closed atomic.Uint64
}

func newSeries(k kind, labels []string, h uint64) *series {
	s := &series{kind: k, labels: labels, hash: h}
	if k == kindHTTP {
		s.duration = newHistogram(len(durationBuckets))
		s.reqSize = newHistogram(len(sizeBuckets))
		s.respSize = newHistogram(len(sizeBuckets))
	}
	return s
}

func (s *series) add(r *report, now int64) {
	if s.lastSeen.Load() != now {
		s.lastSeen.Store(now)
	}
	switch r.kind {
	case kindHTTP:
		s.requests.Add(1)
		s.duration.observe(durationBuckets, r.durationMs)
		s.reqSize.observe(sizeBuckets, float64(r.reqBytes))
		s.respSize.observe(sizeBuckets, float64(r.respBytes))
	case kindTCP:
		if r.closed {
			s.sent.Add(r.sent)
			s.received.Add(r.received)
			s.closed.Add(1)
		}
		if r.opened {
			s.opened.Add(1)
		}
	}
}

type shard struct {
	mu sync.RWMutex
	m  map[uint64]*series
}

// Metrics holds the bounded series and exports them (a
// prometheus.Collector).
type Metrics struct {
	seed   maphash.Seed
	shards [numShards]shard
	max    atomic.Int64
	count  atomic.Int64
	// state holds what changes with the dimensions: the descriptions and
	// the overflow series.
	state atomic.Pointer[metricState]

	overflowed atomic.Uint64
	evicted    atomic.Uint64
	now        func() time.Time
}

type metricState struct {
	dims     []string
	overflow [2]*series
	descs
}

type descs struct {
	requests, duration, reqSize, respSize      *prometheus.Desc
	sent, received, opened, closed             *prometheus.Desc
	seriesGauge, maxGauge, overflowed, evicted *prometheus.Desc
	httpLabels, tcpLabels                      []string
}

// newMetrics keeps at most max label sets, with the given extra dimension
// labels.
func newMetrics(max int, dims []string) *Metrics {
	m := &Metrics{seed: maphash.MakeSeed(), now: time.Now}
	for i := range m.shards {
		m.shards[i].m = map[uint64]*series{}
	}
	m.max.Store(int64(max))
	m.setDims(dims)
	return m
}

// tcpLabelIndexes are the standard labels that TCP metrics carry.
var tcpLabelIndexes = func() []int {
	var out []int
	for i := range numLabels {
		if i != lResponseCode && i != lGRPCStatus {
			out = append(out, i)
		}
	}
	return out
}()

// setDims changes the dimensions: series with other dimensions are
// dropped, since their label sets no longer match the metrics'.
func (m *Metrics) setDims(dims []string) {
	if cur := m.state.Load(); cur != nil && slices.Equal(cur.dims, dims) {
		return
	}
	d := slices.Clone(dims)
	std := config.StandardTelemetryLabels
	httpLabels := append(slices.Clone(std), d...)
	var tcpLabels []string
	for _, i := range tcpLabelIndexes {
		tcpLabels = append(tcpLabels, std[i])
	}
	st := &metricState{dims: d}
	st.descs = descs{
		requests: prometheus.NewDesc("istio_requests_total", "Requests, as reported by the sidecars (Istio's standard metric).", httpLabels, nil),
		duration: prometheus.NewDesc("istio_request_duration_milliseconds", "Request durations in milliseconds (Istio's standard metric).", httpLabels, nil),
		reqSize:  prometheus.NewDesc("istio_request_bytes", "Request sizes, headers and body, in bytes (Istio's standard metric).", httpLabels, nil),
		respSize: prometheus.NewDesc("istio_response_bytes", "Response sizes, headers and body, in bytes (Istio's standard metric).", httpLabels, nil),
		sent:     prometheus.NewDesc("istio_tcp_sent_bytes_total", "Bytes sent to the downstream during TCP connections (Istio's standard metric).", tcpLabels, nil),
		received: prometheus.NewDesc("istio_tcp_received_bytes_total", "Bytes received from the downstream during TCP connections (Istio's standard metric).", tcpLabels, nil),
		opened:   prometheus.NewDesc("istio_tcp_connections_opened_total", "TCP connections opened (Istio's standard metric).", tcpLabels, nil),
		closed:   prometheus.NewDesc("istio_tcp_connections_closed_total", "TCP connections closed (Istio's standard metric).", tcpLabels, nil),

		seriesGauge: prometheus.NewDesc("bowline_telemetry_series", "Label sets kept by the istio_* metrics (overflow series apart).", nil, nil),
		maxGauge:    prometheus.NewDesc("bowline_telemetry_series_max", "The most label sets kept (telemetry max_series).", nil, nil),
		overflowed:  prometheus.NewDesc("bowline_telemetry_overflow_total", "Reports folded into the overflow series because max_series label sets were kept.", nil, nil),
		evicted:     prometheus.NewDesc("bowline_telemetry_series_evicted_total", "Label sets forgotten after "+seriesIdle.String()+" without reports.", nil, nil),
		httpLabels:  httpLabels,
		tcpLabels:   tcpLabels,
	}
	over := func(k kind) *series {
		l := make([]string, int(numLabels)+len(d))
		for i := range l {
			l[i] = OverflowValue
		}
		return newSeries(k, l, 0)
	}
	st.overflow = [2]*series{over(kindHTTP), over(kindTCP)}
	for i := range m.shards {
		m.shards[i].mu.Lock()
	}
	for i := range m.shards {
		m.shards[i].m = map[uint64]*series{}
	}
	m.count.Store(0)
	m.state.Store(st)
	for i := range m.shards {
		m.shards[i].mu.Unlock()
	}
}

// setMax changes the bound; series beyond a lowered bound go as they idle.
func (m *Metrics) setMax(n int) { m.max.Store(int64(n)) }

func (m *Metrics) hash(r *report) uint64 {
	var h maphash.Hash
	h.SetSeed(m.seed)
	h.WriteByte(byte(r.kind))
	for _, l := range r.labels {
		h.WriteString(l)
		h.WriteByte(0)
	}
	for _, l := range r.extra {
		h.WriteString(l)
		h.WriteByte(0)
	}
	return h.Sum64()
}

func (s *series) matches(r *report) bool {
	if s.kind != r.kind {
		return false
	}
	for i, l := range r.labels {
		if s.labels[i] != l {
			return false
		}
	}
	for i, l := range r.extra {
		if s.labels[int(numLabels)+i] != l {
			return false
		}
	}
	return true
}

// observe adds a report to its series.
func (m *Metrics) observe(r *report) {
	if r.intermediate {
		return
	}
	h := m.hash(r)
	sh := &m.shards[h%numShards]
	var now int64
	if r.at.IsZero() {
		now = m.now().Unix()
	} else {
		now = r.at.Unix()
	}
	sh.mu.RLock()
	s := sh.m[h]
	for s != nil && !s.matches(r) {
		s = s.next
	}
	sh.mu.RUnlock()
	if s == nil {
		s = m.create(sh, h, r)
	}
	s.add(r, now)
}

func (m *Metrics) create(sh *shard, h uint64, r *report) *series {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	head := sh.m[h]
	for s := head; s != nil; s = s.next {
		if s.matches(r) {
			return s
		}
	}
	if m.count.Add(1) > m.max.Load() {
		m.count.Add(-1)
		m.overflowed.Add(1)
		return m.state.Load().overflow[r.kind]
	}
	labels := make([]string, 0, int(numLabels)+len(r.extra))
	for _, l := range r.labels {
		labels = append(labels, strings.Clone(l))
	}
	for _, l := range r.extra {
		labels = append(labels, strings.Clone(l))
	}
	s := newSeries(r.kind, labels, h)
	s.next = head
	sh.m[h] = s
	return s
}

// sweep forgets series idle since before the cutoff.
func (m *Metrics) sweep(cutoff time.Time) {
	c := cutoff.Unix()
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for h, head := range sh.m {
			var keep *series
			for s := head; s != nil; {
				next := s.next
				if s.lastSeen.Load() < c {
					m.count.Add(-1)
					m.evicted.Add(1)
				} else {
					s.next = keep
					keep = s
				}
				s = next
			}
			if keep == nil {
				delete(sh.m, h)
			} else {
				sh.m[h] = keep
			}
		}
		sh.mu.Unlock()
	}
}

// Series is the number of label sets kept (overflow series apart).
func (m *Metrics) Series() int { return int(m.count.Load()) }

// Overflowed is the number of reports folded into the overflow series.
func (m *Metrics) Overflowed() uint64 { return m.overflowed.Load() }

// Describe implements prometheus.Collector. The metrics' label names follow
// the configuration, so the collector is unchecked.
func (m *Metrics) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	st := m.state.Load()
	d := st.descs
	ch <- prometheus.MustNewConstMetric(d.seriesGauge, prometheus.GaugeValue, float64(m.count.Load()))
	ch <- prometheus.MustNewConstMetric(d.maxGauge, prometheus.GaugeValue, float64(m.max.Load()))
	ch <- prometheus.MustNewConstMetric(d.overflowed, prometheus.CounterValue, float64(m.overflowed.Load()))
	ch <- prometheus.MustNewConstMetric(d.evicted, prometheus.CounterValue, float64(m.evicted.Load()))
	emit := func(s *series) {
		if len(s.labels) != len(d.httpLabels) {
			return // from before a change of dimensions
		}
		switch s.kind {
		case kindHTTP:
			if s.requests.Load() == 0 {
				return
			}
			ch <- prometheus.MustNewConstMetric(d.requests, prometheus.CounterValue, float64(s.requests.Load()), s.labels...)
			for _, x := range []struct {
				desc   *prometheus.Desc
				h      *histogram
				bounds []float64
			}{{d.duration, &s.duration, durationBuckets}, {d.reqSize, &s.reqSize, sizeBuckets}, {d.respSize, &s.respSize, sizeBuckets}} {
				n, sum, cum := x.h.snapshot(x.bounds)
				ch <- prometheus.MustNewConstHistogram(x.desc, n, sum, cum, s.labels...)
			}
		case kindTCP:
			if s.opened.Load()+s.closed.Load() == 0 {
				return
			}
			tl := make([]string, len(tcpLabelIndexes))
			for i, j := range tcpLabelIndexes {
				tl[i] = s.labels[j]
			}
			ch <- prometheus.MustNewConstMetric(d.sent, prometheus.CounterValue, float64(s.sent.Load()), tl...)
			ch <- prometheus.MustNewConstMetric(d.received, prometheus.CounterValue, float64(s.received.Load()), tl...)
			ch <- prometheus.MustNewConstMetric(d.opened, prometheus.CounterValue, float64(s.opened.Load()), tl...)
			ch <- prometheus.MustNewConstMetric(d.closed, prometheus.CounterValue, float64(s.closed.Load()), tl...)
		}
	}
	for _, s := range st.overflow {
		emit(s)
	}
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.RLock()
		var list []*series
		for _, head := range sh.m {
			for s := head; s != nil; s = s.next {
				list = append(list, s)
			}
		}
		sh.mu.RUnlock()
		for _, s := range list {
			emit(s)
		}
	}
}

var _ prometheus.Collector = (*Metrics)(nil)
