package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bowlinemesh/bowline/policy/telemetry"
	"github.com/bowlinemesh/bowline/policy/telemetry/telemetrytest"
)

// syncBuffer is an io.Writer safe for the audit writer and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type harness struct {
	svc   *telemetry.Service
	conn  *grpc.ClientConn
	http  *httptest.Server
	audit *syncBuffer
	mesh  *telemetrytest.Mesh
}

// start serves a telemetry service the way policyd does: ALS on a loopback
// gRPC port, the endpoints and /metrics on an HTTP one.
func start(t *testing.T) *harness {
	t.Helper()
	mesh, err := telemetrytest.NewMesh(telemetrytest.MeshHCL)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{audit: &syncBuffer{}, mesh: mesh}
	h.svc = telemetry.New(telemetry.Options{AuditLog: h.audit})
	h.svc.Update(mesh.Config)
	h.svc.UpdateCatalog(mesh.Catalog)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- h.svc.Run(ctx) }()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	h.svc.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	h.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(h.svc.Collectors()...)
	mux := http.NewServeMux()
	h.svc.Handle(mux)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	h.http = httptest.NewServer(mux)
	t.Cleanup(func() {
		h.http.Close()
		h.conn.Close()
		gs.Stop()
		cancel()
		if err := <-runDone; err != nil {
			t.Error(err)
		}
	})
	return h
}

func (h *harness) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := http.Get(h.http.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", path, resp.Status, b)
	}
	return string(b)
}

// metricValue finds the sample of a metric whose labels include all those
// given, and returns its value.
func metricValue(text, name string, labels map[string]string) (string, bool) {
	for line := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok && len(labels) == 0 {
			return v, true
		}
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		end := strings.LastIndex(rest, "} ")
		if end < 0 {
			continue
		}
		all := true
		for k, v := range labels {
			if !strings.Contains(rest[:end], fmt.Sprintf("%s=%q", k, v)) {
				all = false
				break
			}
		}
		if all {
			return rest[end+2:], true
		}
	}
	return "", false
}

func TestAccessLogsToSignals(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 100
	tr := telemetrytest.ChainTraffic(n)
	if err := h.mesh.SendChain(ctx, h.conn, n); err != nil {
		t.Fatal(err)
	}
	if err := h.mesh.Close(); err != nil { // policyd answered: all ingested
		t.Fatal(err)
	}

	// /metrics: Istio's metrics under the right labels.
	metrics := h.get(t, "/metrics")
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   string
	}{
		{"istio_requests_total", map[string]string{"reporter": "source", "source_workload": "frontend", "source_version": "v1",
			"destination_service_name": "orders", "destination_version": "v2", "response_code": "200", "tenant": "acme",
			"destination_principal": telemetrytest.Principal("orders"), "request_protocol": "http", "connection_security_policy": "unknown"},
			fmt.Sprint(tr.FrontendOrders / 2)},
		{"istio_requests_total", map[string]string{"reporter": "source", "source_workload": "frontend", "response_code": "503", "tenant": "globex"},
			fmt.Sprint(tr.FrontendOrdersErrors)},
		{"istio_requests_total", map[string]string{"reporter": "destination", "source_workload": "frontend", "destination_workload": "orders",
			"destination_version": "v2", "source_principal": telemetrytest.Principal("frontend"), "connection_security_policy": "mutual_tls",
			"response_code": "503", "destination_service": "orders.default"}, fmt.Sprint(tr.FrontendOrdersErrors)},
		{"istio_requests_total", map[string]string{"reporter": "destination", "destination_workload": "payments", "request_protocol": "grpc",
			"grpc_response_status": "14"}, fmt.Sprint(tr.OrdersPaymentsErrors)},
		{"istio_requests_total", map[string]string{"reporter": "destination", "source_workload": "batch", "destination_workload": "payments",
			"grpc_response_status": "7"}, fmt.Sprint(tr.BatchDenied)},
		{"istio_request_duration_milliseconds_count", map[string]string{"reporter": "source", "source_workload": "orders", "grpc_response_status": "0"},
			fmt.Sprint(tr.OrdersPayments - tr.OrdersPaymentsErrors + tr.DryRun)},
		{"istio_request_bytes_count", map[string]string{"reporter": "destination", "destination_workload": "orders", "response_code": "200", "tenant": "globex"},
			fmt.Sprint(tr.FrontendOrders/2 - tr.FrontendOrdersErrors)},
		{"bowline_telemetry_entries_total", map[string]string{"kind": "http"},
			fmt.Sprint(2*tr.FrontendOrders + 2*(tr.OrdersPayments+tr.DryRun) + tr.BatchDenied)},
	} {
		got, ok := metricValue(metrics, c.name, c.labels)
		if !ok || got != c.want {
			t.Errorf("%s%v = %q (found %v), want %s", c.name, c.labels, got, ok, c.want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", metrics)
	}

	// /v1/graph: each request once, with its error ratio.
	var g telemetry.GraphView
	if err := json.Unmarshal([]byte(h.get(t, "/v1/graph?window=5m")), &g); err != nil {
		t.Fatal(err)
	}
	edges := map[string]telemetry.GraphEdge{}
	for _, e := range g.Edges {
		edges[e.Source+" -> "+e.Destination] = e
	}
	check := func(key string, requests, errors int) {
		e, ok := edges[key]
		if !ok {
			t.Errorf("no edge %s in %+v", key, g.Edges)
			return
		}
		if e.Requests != uint64(requests) || e.Errors != uint64(errors) {
			t.Errorf("%s: %d requests, %d errors; want %d, %d", key, e.Requests, e.Errors, requests, errors)
		}
		if want := float64(errors) / float64(requests); abs(e.ErrorRatio-want) > 1e-3 {
			t.Errorf("%s: error ratio %v, want %v", key, e.ErrorRatio, want)
		}
		if want := float64(requests) / g.WindowSeconds; abs(e.Rate-want) > 1e-3 {
			t.Errorf("%s: rate %v, want %v", key, e.Rate, want)
		}
		if e.MTLS != 1 || e.P99Ms <= 0 || e.P50Ms > e.P99Ms {
			t.Errorf("%s: mtls %v p50 %v p99 %v", key, e.MTLS, e.P50Ms, e.P99Ms)
		}
	}
	check("default/frontend -> default/orders", tr.FrontendOrders, tr.FrontendOrdersErrors)
	check("default/orders -> default/payments", tr.OrdersPayments+tr.DryRun, tr.OrdersPaymentsErrors)
	check("default/batch -> default/payments", tr.BatchDenied, tr.BatchDenied)
	if len(g.Edges) != 3 {
		t.Errorf("edges %+v", g.Edges)
	}
	versions := map[string]string{}
	for _, n := range g.Nodes {
		versions[n.ID] = n.Version
	}
	for id, v := range map[string]string{"default/frontend": "v1", "default/orders": "v2", "default/payments": "v1", "default/batch": "unknown"} {
		if versions[id] != v {
			t.Errorf("node %s: version %q, want %q (nodes %+v)", id, versions[id], v, g.Nodes)
		}
	}

	// The audit log: the proxy's RBAC denials and the dry-run denials, with
	// their rule's position.
	flush, cancelFlush := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelFlush()
	if err := h.svc.AuditLog().Flush(flush); err != nil {
		t.Fatal(err)
	}
	var recs []telemetry.AuditRecord
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs = recs[:0]
		for line := range strings.SplitSeq(strings.TrimSpace(h.audit.String()), "\n") {
			if line == "" {
				continue
			}
			var r telemetry.AuditRecord
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("audit line %q: %v", line, err)
			}
			recs = append(recs, r)
		}
		if len(recs) >= tr.BatchDenied+tr.DryRun || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	count := map[string]int{}
	for _, r := range recs {
		count[r.Decision+" "+r.Rule+" "+r.RuleAt]++
		if r.Origin != telemetry.OriginProxy || r.Destination != "default/payments" || r.Method != "POST" || r.Reporter != "payments-1" {
			t.Errorf("record %+v", r)
		}
	}
	want := map[string]int{
		"deny " + telemetrytest.DenyBatchRule + " " + telemetrytest.DenyBatchAt:           tr.BatchDenied,
		"dry_run_deny " + telemetrytest.DryRunRefund + " " + telemetrytest.DryRunRefundAt: tr.DryRun,
	}
	if fmt.Sprint(count) != fmt.Sprint(want) {
		t.Errorf("audit records %v, want %v\n%s", count, want, h.audit.String())
	}
	for _, r := range recs {
		if r.Decision == telemetry.DecisionDeny && (r.SourcePrincipal != telemetrytest.Principal("batch") || r.Source != "default/batch") {
			t.Errorf("deny record source %q %q", r.SourcePrincipal, r.Source)
		}
	}

	// /v1/signals: the golden signals of the three services called, and the
	// recent denials.
	var s telemetry.SignalsView
	if err := json.Unmarshal([]byte(h.get(t, "/v1/signals?window=1m")), &s); err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, svc := range s.Services {
		got[svc.ID] = svc.Requests
	}
	if got["default/orders"] != uint64(tr.FrontendOrders) || got["default/payments"] != uint64(tr.OrdersPayments+tr.DryRun+tr.BatchDenied) {
		t.Errorf("signals %v", got)
	}
	if len(s.Denials) != tr.BatchDenied+tr.DryRun || s.Telemetry.Series == 0 || s.Telemetry.MaxSeries != 1000 {
		t.Errorf("denials %d, telemetry %+v", len(s.Denials), s.Telemetry)
	}
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}

func TestEndpointsErrors(t *testing.T) {
	h := start(t)
	for _, path := range []string{"/v1/graph?window=banana", "/v1/graph?window=1h", "/v1/signals?window=1s"} {
		resp, err := http.Get(h.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body["error"], "window") {
			t.Errorf("%s: %s %v", path, resp.Status, body)
		}
	}
	page := h.get(t, "/")
	if !strings.Contains(page, `<svg id="graph"`) || !strings.Contains(page, `src="/ui/app.js"`) {
		t.Errorf("dashboard page:\n%s", page)
	}
	for _, f := range []string{"/ui/app.js", "/ui/style.css"} {
		h.get(t, f)
	}
	if resp, err := http.Get(h.http.URL + "/ui/../telemetry.go"); err == nil {
		if resp.StatusCode == http.StatusOK {
			t.Error("path escape served")
		}
		resp.Body.Close()
	}
}
