// Package telemetry is the telemetry half of bowline policyd: an access log
// service (ALS v3) that every sidecar streams its requests to, and what it
// makes of them: Prometheus metrics named and labelled like Istio's standard
// metrics, in a bounded number of series (metrics.go); a service graph over
// a sliding window (graph.go); an audit log of authorization denials
// (audit.go); and the JSON endpoints and dashboard that show them (http.go,
// package ui).
//
// Reports are attributed (attribution.go) from the stream's identifier —
// the node that `bowline bootstrap envoy` wrote, naming the workload's
// namespace, service and version, and the log name, telling inbound from
// outbound — and from the entry's fields; docs/telemetry.md is the
// contract. Nothing is kept but bounded aggregates, so memory does not grow
// with the number of requests, and a restart loses only the window.
package telemetry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// Options configure the service.
type Options struct {
	Log *slog.Logger
	// AuditLog receives the audit log's JSON lines (nil: the records are only
	// kept for the dashboard).
	AuditLog io.Writer
}

// Service is the access log service and the signals made from it.
type Service struct {
	accesslogv3.UnimplementedAccessLogServiceServer

	log     *slog.Logger
	metrics *Metrics
	graph   *Graph
	audit   *AuditLog
	attr    atomic.Pointer[attributor]
	report  reporters

	entries     [2]atomic.Uint64 // HTTP, TCP
	streamsOpen atomic.Int64
	unnamed     atomic.Uint64
	selfDescs   struct{ entries, streams, graphDropped, auditDropped, auditRecords *prometheus.Desc }
	// lastCfg and lastSnap are what Follow applied last.
	lastCfg  *config.Config
	lastSnap *discovery.Snapshot
}

var _ accesslogv3.AccessLogServiceServer = (*Service)(nil)

// New returns a service with the default settings until Update gives it a
// configuration.
func New(o Options) *Service {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{log: log, audit: NewAuditLog(o.AuditLog)}
	def := (*config.Config)(nil).TelemetrySettings()
	s.metrics = newMetrics(def.MaxSeries, nil)
	s.graph = newGraph(graphEdges(def.MaxSeries))
	s.report.workloads, s.report.addrs = map[serviceKey]int{}, map[netip.Addr]int{}
	s.attr.Store(&attributor{reporting: &s.report})
	s.selfDescs.entries = prometheus.NewDesc("bowline_telemetry_entries_total", "Access log entries received, by kind (http, tcp).", []string{"kind"}, nil)
	s.selfDescs.streams = prometheus.NewDesc("bowline_telemetry_streams", "Access log streams open.", nil, nil)
	s.selfDescs.graphDropped = prometheus.NewDesc("bowline_telemetry_graph_dropped_total", "Reports left out of the service graph because it held its most edges.", nil, nil)
	s.selfDescs.auditDropped = prometheus.NewDesc("bowline_audit_dropped_total", "Audit records left out of the audit log file because its writer could not keep up.", nil, nil)
	s.selfDescs.auditRecords = prometheus.NewDesc("bowline_audit_records_total", "Audit records written to the audit log file.", nil, nil)
	return s
}

// graphEdges bounds the graph: as many edges as label sets, up to 2,000.
func graphEdges(maxSeries int) int { return min(maxSeries, 2000) }

// Update applies a configuration: max_series, the dimensions, and the
// rules the audit log names.
func (s *Service) Update(cfg *config.Config) {
	t := cfg.TelemetrySettings()
	var labels []string
	var dims []dimension
	for _, d := range t.Dimensions {
		labels = append(labels, d.Label)
		if d.RequestHeader != "" {
			dims = append(dims, dimension{label: d.Label, header: d.RequestHeader})
		} else {
			dims = append(dims, dimension{label: d.Label, header: d.ResponseHeader, response: true})
		}
	}
	s.metrics.setDims(labels)
	s.metrics.setMax(t.MaxSeries)
	a := *s.attr.Load()
	a.dims = dims
	s.attr.Store(&a)
	s.audit.update(cfg)
}

// UpdateCatalog applies a catalog snapshot: endpoint versions and workload
// identities.
func (s *Service) UpdateCatalog(snap *discovery.Snapshot) {
	a := *s.attr.Load()
	a.catalog = newCatalogIndex(snap)
	s.attr.Store(&a)
}

// Register serves the access log service on a gRPC server.
func (s *Service) Register(g grpc.ServiceRegistrar) { accesslogv3.RegisterAccessLogServiceServer(g, s) }

// Collectors are the Prometheus collectors: the istio_* metrics and the
// service's own.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.metrics, selfCollector{s}}
}

// Auditor is where policyd's ext_authz service records its decisions.
func (s *Service) Auditor() Auditor { return s.audit }

// AuditLog is the audit log.
func (s *Service) AuditLog() *AuditLog { return s.audit }

// Metrics is the bounded metrics store.
func (s *Service) Metrics() *Metrics { return s.metrics }

// Graph is the service graph.
func (s *Service) Graph() *Graph { return s.graph }

// Run writes the audit log and forgets idle series and edges until ctx is
// done.
func (s *Service) Run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.audit.Run(ctx) }()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return <-done
		case now := <-t.C:
			s.metrics.sweep(now.Add(-seriesIdle))
			s.graph.sweep()
		}
	}
}

// reporters are the workloads and addresses with an access log stream
// open: what they call, they report themselves (graph.go).
type reporters struct {
	mu        sync.RWMutex
	workloads map[serviceKey]int
	addrs     map[netip.Addr]int
}

func (r *reporters) add(w serviceKey, ip netip.Addr, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.workloads[w] += n
	if r.workloads[w] <= 0 {
		delete(r.workloads, w)
	}
	if ip.IsValid() {
		r.addrs[ip] += n
		if r.addrs[ip] <= 0 {
			delete(r.addrs, ip)
		}
	}
}

func (r *reporters) workloadReporting(ns, svc string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.workloads[serviceKey{ns, svc}] > 0
}

func (r *reporters) addrReporting(ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.addrs[a.Unmap()] > 0
}

// StreamAccessLogs receives one proxy's access logs. The first message
// names the proxy (its node) and the log; later ones need not.
func (s *Service) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	var ip netip.Addr
	if p, ok := peer.FromContext(stream.Context()); ok {
		if ta, ok := p.Addr.(*net.TCPAddr); ok {
			ip = ta.AddrPort().Addr().Unmap()
		}
	}
	s.streamsOpen.Add(1)
	defer s.streamsOpen.Add(-1)
	in := newIngester(s)
	defer in.close()
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		in.message(msg, ip)
	}
}

// ingester is one stream's state: its reporter and scratch space.
type ingester struct {
	s          *Service
	rep        *reporter
	registered serviceKey
	ip         netip.Addr
	r          report
	extra      []string
}

func newIngester(s *Service) *ingester { return &ingester{s: s} }

func (in *ingester) close() {
	if in.rep != nil {
		in.s.report.add(in.registered, in.ip, -1)
	}
}

// message ingests one message of a stream.
func (in *ingester) message(msg *accesslogv3.StreamAccessLogsMessage, ip netip.Addr) {
	if id := msg.GetIdentifier(); id != nil {
		rep := newReporter(id.GetNode(), id.GetLogName())
		in.close()
		in.rep, in.ip = &rep, ip
		in.registered = serviceKey{rep.self.Namespace, rep.self.Service}
		in.s.report.add(in.registered, ip, 1)
		in.s.log.Debug("access log stream", "node", rep.nodeID, "log", id.GetLogName(), "workload", in.registered.id(), "peer", ip)
	}
	if in.rep == nil {
		in.s.unnamed.Add(1)
		return
	}
	a := in.s.attr.Load()
	now := time.Now()
	if cap(in.extra) < len(a.dims) {
		in.extra = make([]string, len(a.dims))
	}
	for _, e := range msg.GetHttpLogs().GetLogEntry() {
		in.r = report{at: now}
		a.http(in.rep, e, &in.r, in.extra)
		in.s.observe(&in.r)
		in.s.entries[kindHTTP].Add(1)
	}
	for _, e := range msg.GetTcpLogs().GetLogEntry() {
		in.r = report{at: now}
		a.tcp(in.rep, e, &in.r, in.extra)
		in.s.observe(&in.r)
		in.s.entries[kindTCP].Add(1)
	}
}

func (s *Service) observe(r *report) {
	s.metrics.observe(r)
	s.graph.observe(r)
	s.audit.auditReport(r)
}

// IngestHTTP attributes and observes HTTP entries as if a stream with this
// identifier had sent them (benchmarks and tests that bypass gRPC).
func (s *Service) IngestHTTP(id *accesslogv3.StreamAccessLogsMessage_Identifier, entries []*alsdata.HTTPAccessLogEntry) {
	in := newIngester(s)
	defer in.close()
	in.message(&accesslogv3.StreamAccessLogsMessage{Identifier: id, LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}}}, netip.Addr{})
}

// selfCollector exports the service's own counters.
type selfCollector struct{ s *Service }

func (c selfCollector) Describe(ch chan<- *prometheus.Desc) {
	d := c.s.selfDescs
	for _, x := range []*prometheus.Desc{d.entries, d.streams, d.graphDropped, d.auditDropped, d.auditRecords} {
		ch <- x
	}
}

func (c selfCollector) Collect(ch chan<- prometheus.Metric) {
	s, d := c.s, c.s.selfDescs
	ch <- prometheus.MustNewConstMetric(d.entries, prometheus.CounterValue, float64(s.entries[kindHTTP].Load()), "http")
	ch <- prometheus.MustNewConstMetric(d.entries, prometheus.CounterValue, float64(s.entries[kindTCP].Load()), "tcp")
	ch <- prometheus.MustNewConstMetric(d.streams, prometheus.GaugeValue, float64(s.streamsOpen.Load()))
	ch <- prometheus.MustNewConstMetric(d.graphDropped, prometheus.CounterValue, float64(s.graph.Dropped()))
	ch <- prometheus.MustNewConstMetric(d.auditDropped, prometheus.CounterValue, float64(s.audit.Dropped()))
	ch <- prometheus.MustNewConstMetric(d.auditRecords, prometheus.CounterValue, float64(s.audit.Written()))
}

// Follow applies what changed: a new configuration (Update) or catalog
// snapshot (UpdateCatalog). Nil values are skipped. It is meant for one
// goroutine, the daemon's loop that follows the store and the catalog.
func (s *Service) Follow(cfg *config.Config, snap *discovery.Snapshot) {
	if cfg != nil && cfg != s.lastCfg {
		s.lastCfg = cfg
		s.Update(cfg)
	}
	if snap != nil && snap != s.lastSnap {
		s.lastSnap = snap
		s.UpdateCatalog(snap)
	}
}

// Entries is the number of access log entries received.
func (s *Service) Entries() uint64 { return s.entries[kindHTTP].Load() + s.entries[kindTCP].Load() }
