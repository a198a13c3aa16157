package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/xds/server"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// The access log contract: translate asks for what attribution reads.
func TestContractMatchesTranslate(t *testing.T) {
	for _, c := range [][2]string{
		{LogInbound, translate.AccessLogInbound},
		{LogOutbound, translate.AccessLogOutbound},
		{TagUpstreamPrincipal, translate.TagUpstreamPrincipal},
		{MetaService, server.MetaService},
		{MetaNamespace, server.MetaNamespace},
		{MetaVersion, server.MetaVersion},
	} {
		if c[0] != c[1] {
			t.Errorf("telemetry says %q, the other side %q", c[0], c[1])
		}
	}
	if !slices.Contains(translate.AccessLogRequestHeaders, "content-type") ||
		!slices.Contains(translate.AccessLogResponseTrailers, "grpc-status") || !slices.Contains(translate.AccessLogResponseHeaders, "grpc-status") {
		t.Error("translate does not ask for content-type and grpc-status")
	}
	if len(config.StandardTelemetryLabels) != numLabels {
		t.Fatalf("%d standard labels, %d label indexes", len(config.StandardTelemetryLabels), numLabels)
	}
	for i, want := range []string{"reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
		"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
		"destination_service", "destination_service_name", "destination_service_namespace",
		"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy"} {
		if config.StandardTelemetryLabels[i] != want {
			t.Errorf("label %d is %q, want %q", i, config.StandardTelemetryLabels[i], want)
		}
	}
}

func node(svc, ns, version string) *core.Node {
	md := map[string]any{MetaService: svc, MetaNamespace: ns, "kind": "envoy"}
	if version != "" {
		md[MetaVersion] = version
	}
	s, _ := structpb.NewStruct(md)
	return &core.Node{Id: svc + "-1", Cluster: svc, Metadata: s}
}

func sockAddr(a string, p uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: a, PortSpecifier: &core.SocketAddress_PortValue{PortValue: p}}}}
}

func uriCert(u string) *alsdata.TLSProperties_CertificateProperties {
	return &alsdata.TLSProperties_CertificateProperties{SubjectAltName: []*alsdata.TLSProperties_CertificateProperties_SubjectAltName{
		{San: &alsdata.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: u}}}}
}

func labelsOf(r *report) map[string]string {
	m := map[string]string{}
	for i, l := range r.labels {
		m[config.StandardTelemetryLabels[i]] = l
	}
	return m
}

func TestAttributeInboundHTTP(t *testing.T) {
	rep := newReporter(node("orders", "shop", "v2"), LogInbound)
	e := &alsdata.HTTPAccessLogEntry{
		CommonProperties: &alsdata.AccessLogCommon{
			DownstreamRemoteAddress: sockAddr("10.0.0.1", 40000),
			TlsProperties: &alsdata.TLSProperties{
				PeerCertificateProperties:  uriCert("spiffe://mesh.test/ns/web/svc/frontend"),
				LocalCertificateProperties: uriCert("spiffe://mesh.test/ns/shop/svc/orders"),
			},
			Duration:      durationpb.New(12500 * time.Microsecond),
			ResponseFlags: &alsdata.ResponseFlags{UpstreamConnectionFailure: true, UpstreamRetryLimitExceeded: true},
		},
		Request:  &alsdata.HTTPRequestProperties{RequestMethod: core.RequestMethod_POST, Path: "/api/orders", RequestHeadersBytes: 100, RequestBodyBytes: 20, RequestHeaders: map[string]string{"x-tenant": "acme"}},
		Response: &alsdata.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(503), ResponseHeadersBytes: 50, ResponseBodyBytes: 7},
	}
	a := &attributor{dims: []dimension{{label: "tenant", header: "x-tenant"}, {label: "cache", header: "x-cache", response: true}}}
	var r report
	a.http(&rep, e, &r, make([]string, 2))
	want := map[string]string{
		"reporter": "destination", "source_workload": "frontend", "source_workload_namespace": "web", "source_principal": "spiffe://mesh.test/ns/web/svc/frontend",
		"source_app": "frontend", "source_version": "unknown", "destination_workload": "orders", "destination_workload_namespace": "shop",
		"destination_principal": "spiffe://mesh.test/ns/shop/svc/orders", "destination_app": "orders", "destination_version": "v2",
		"destination_service": "orders.shop", "destination_service_name": "orders", "destination_service_namespace": "shop",
		"request_protocol": "http", "response_code": "503", "grpc_response_status": "", "response_flags": "UF,URX", "connection_security_policy": "mutual_tls",
	}
	if got := labelsOf(&r); !mapsEqual(got, want) {
		t.Errorf("labels:\n got %v\nwant %v", got, want)
	}
	if !slices.Equal(r.extra, []string{"acme", Unknown}) {
		t.Errorf("extra = %v", r.extra)
	}
	if r.durationMs != 12.5 || r.reqBytes != 120 || r.respBytes != 57 || !r.isError || !r.mtls || r.method != "POST" || r.path != "/api/orders" {
		t.Errorf("report = %+v", r)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestAttributeOutboundGRPC(t *testing.T) {
	rep := newReporter(node("orders", "", ""), LogOutbound)
	e := &alsdata.HTTPAccessLogEntry{
		CommonProperties: &alsdata.AccessLogCommon{
			UpstreamCluster:            "default/payments/canary",
			UpstreamRemoteAddress:      sockAddr("10.0.0.3", 21000),
			CustomTags:                 map[string]string{TagUpstreamPrincipal: "spiffe://mesh.test/ns/default/svc/payments"},
			TimeToLastDownstreamTxByte: durationpb.New(3 * time.Millisecond),
		},
		Request:  &alsdata.HTTPRequestProperties{RequestHeaders: map[string]string{"content-type": "application/grpc+proto"}},
		Response: &alsdata.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200), ResponseTrailers: map[string]string{"grpc-status": "14"}},
	}
	ix := &catalogIndex{versions: map[netipAddrPort]string{mustAddrPort("10.0.0.3:21000"): "v1"}}
	a := &attributor{catalog: ix}
	var r report
	a.http(&rep, e, &r, nil)
	l := labelsOf(&r)
	for k, v := range map[string]string{
		"reporter": "source", "source_workload": "orders", "source_workload_namespace": "default", "source_version": "unknown", "source_principal": "unknown",
		"destination_service_name": "payments", "destination_version": "v1", "destination_principal": "spiffe://mesh.test/ns/default/svc/payments",
		"request_protocol": "grpc", "grpc_response_status": "14", "response_code": "200", "response_flags": "-", "connection_security_policy": "unknown",
		"destination_service": "payments.default",
	} {
		if l[k] != v {
			t.Errorf("%s = %q, want %q", k, l[k], v)
		}
	}
	if !r.isError || !r.mtls || r.durationMs != 3 {
		t.Errorf("isError %v mtls %v duration %v", r.isError, r.mtls, r.durationMs)
	}
}

func TestAttributeTCPEvents(t *testing.T) {
	rep := newReporter(node("db", "default", "v1"), LogInbound)
	a := &attributor{}
	for _, tc := range []struct {
		typ            alsdata.AccessLogType
		upstream       bool
		opened, closed bool
		intermediate   bool
	}{
		{alsdata.AccessLogType_TcpUpstreamConnected, true, true, false, false},
		{alsdata.AccessLogType_TcpConnectionEnd, true, false, true, false},
		{alsdata.AccessLogType_TcpConnectionEnd, false, true, true, false}, // never connected upstream
		{alsdata.AccessLogType_TcpPeriodic, true, false, false, true},
		{alsdata.AccessLogType_NotSet, true, true, true, false},
	} {
		c := &alsdata.AccessLogCommon{AccessLogType: tc.typ}
		if tc.upstream {
			c.UpstreamRemoteAddress = sockAddr("127.0.0.1", 5432)
		}
		var r report
		a.tcp(&rep, &alsdata.TCPAccessLogEntry{CommonProperties: c, ConnectionProperties: &alsdata.ConnectionProperties{SentBytes: 10, ReceivedBytes: 5}}, &r, nil)
		if r.opened != tc.opened || r.closed != tc.closed || r.intermediate != tc.intermediate || r.labels[lProtocol] != "tcp" {
			t.Errorf("%v upstream=%v: opened %v closed %v intermediate %v", tc.typ, tc.upstream, r.opened, r.closed, r.intermediate)
		}
	}
}

func TestPrincipalWorkload(t *testing.T) {
	a := &attributor{catalog: &catalogIndex{principals: map[string]serviceKeyD{"spiffe://td/ns/k8s/sa/web-sa": {Namespace: "k8s", Name: "web"}}}}
	for p, want := range map[string][2]string{
		"spiffe://td/ns/shop/svc/orders": {"shop", "orders"},
		"spiffe://td/ns/k8s/sa/web-sa":   {"k8s", "web"},
		"spiffe://td/ns/k8s/sa/other":    {"k8s", Unknown},
		"spiffe://td/elsewhere":          {Unknown, Unknown},
		"not a uri":                      {Unknown, Unknown},
	} {
		ns, svc := a.principalWorkload(p)
		if ns != want[0] || svc != want[1] {
			t.Errorf("%s: %s/%s, want %s/%s", p, ns, svc, want[0], want[1])
		}
	}
}

func TestResponseFlags(t *testing.T) {
	if got := responseFlags(nil); got != "-" {
		t.Errorf("nil: %q", got)
	}
	if got := responseFlags(&alsdata.ResponseFlags{}); got != "-" {
		t.Errorf("none: %q", got)
	}
	f := &alsdata.ResponseFlags{NoHealthyUpstream: true, RateLimited: true, UnauthorizedDetails: &alsdata.ResponseFlags_Unauthorized{}, DownstreamRemoteReset: true}
	if got := responseFlags(f); got != "UH,RL,UAEX,DR" {
		t.Errorf("got %q", got)
	}
}

func httpReport(src, dst string, code uint32, extra ...string) *report {
	r := &report{kind: kindHTTP, extra: extra, durationMs: 5}
	for i := range r.labels {
		r.labels[i] = "x"
	}
	r.labels[lSrcWorkload], r.labels[lDstWorkload], r.labels[lResponseCode] = src, dst, codeString(code)
	return r
}

// Past max_series, new label sets fold into the overflow series and are
// counted; known label sets keep counting.
func TestMetricsCap(t *testing.T) {
	m := newMetrics(3, []string{"tenant"})
	for i := range 10 {
		m.observe(httpReport("a", "b", 200, fmt.Sprintf("t%d", i)))
	}
	m.observe(httpReport("a", "b", 200, "t0"))
	if m.Series() != 3 || m.Overflowed() != 7 {
		t.Fatalf("series %d overflowed %d", m.Series(), m.Overflowed())
	}
	out := gather(t, m)
	if !strings.Contains(out, `istio_requests_total{connection_security_policy="x",destination_app="x"`) {
		t.Fatalf("no request series:\n%s", out)
	}
	if got := countLines(out, "istio_requests_total{"); got != 4 {
		t.Errorf("%d istio_requests_total series, want 3 + overflow:\n%s", got, out)
	}
	if !strings.Contains(out, `tenant="t0"} 2`) || !strings.Contains(out, `tenant="overflow"} 7`) {
		t.Errorf("counts:\n%s", out)
	}
	if !strings.Contains(out, "bowline_telemetry_overflow_total 7") || !strings.Contains(out, "bowline_telemetry_series 3") {
		t.Errorf("own metrics:\n%s", out)
	}

	// Idle series are forgotten, which makes room.
	m.sweep(time.Now().Add(time.Hour))
	if m.Series() != 0 {
		t.Fatalf("after sweep: %d series", m.Series())
	}
	m.observe(httpReport("a", "b", 200, "t9"))
	if m.Series() != 1 {
		t.Fatalf("after sweep and a report: %d series", m.Series())
	}
}

func countLines(s, prefix string) int {
	n := 0
	for l := range strings.SplitSeq(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

func TestMetricsHistogramsAndTCP(t *testing.T) {
	m := newMetrics(100, nil)
	r := httpReport("a", "b", 200)
	r.durationMs, r.reqBytes, r.respBytes = 7, 150, 2000
	m.observe(r)
	tr := &report{kind: kindTCP, opened: true}
	for i := range tr.labels {
		tr.labels[i] = "y"
	}
	m.observe(tr)
	tr2 := *tr
	tr2.opened, tr2.closed, tr2.sent, tr2.received = false, true, 300, 40
	m.observe(&tr2)
	out := gather(t, m)
	for _, want := range []string{
		`istio_request_duration_milliseconds_bucket{`, `le="5"} 0`, `le="10"} 1`,
		`istio_request_duration_milliseconds_sum{`, `istio_request_bytes_bucket{`, `le="1000"} 1`,
		`istio_response_bytes_sum{`,
		`istio_tcp_connections_opened_total{`, `istio_tcp_connections_closed_total{`,
		`istio_tcp_sent_bytes_total{connection_security_policy="y"`, `} 300`, `} 40`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, `istio_tcp_sent_bytes_total{connection_security_policy="y",destination_app="y",destination_principal="y",destination_service="y",destination_service_name="y",destination_service_namespace="y",destination_version="y",destination_workload="y",destination_workload_namespace="y",grpc_response_status`) {
		t.Error("TCP metrics carry grpc_response_status")
	}
}

type fakeReporting struct {
	workloads map[string]bool
	addrs     map[string]bool
}

func (f fakeReporting) workloadReporting(ns, svc string) bool { return f.workloads[ns+"/"+svc] }
func (f fakeReporting) addrReporting(ip string) bool          { return f.addrs[ip] }

// Each request is counted once: from the caller's report, or from the
// callee's when the caller does not report (attributor.callerReports).
func TestGraphCountsOnce(t *testing.T) {
	g := newGraph(100)
	now := time.Unix(1_700_000_005, 0)
	g.now = func() time.Time { return now }
	out := &report{kind: kindHTTP, src: workload{"default", "frontend", "v1"}, dst: workload{"default", "orders", "v2"}, durationMs: 10, mtls: true}
	out.labels[lProtocol] = "http"
	in := *out
	in.inbound, in.srcPrincipalKnown = true, true
	for range 9 {
		g.observe(out)
		g.observe(&in)
	}
	bad := *out
	bad.isError = true
	g.observe(&bad)
	g.observe(&in)
	// A proxyless caller is counted from the callee.
	batch := in
	batch.src, batch.countAtDestination = workload{"default", "batch", Unknown}, true
	for range 4 {
		g.observe(&batch)
	}
	// A plaintext caller from outside the mesh.
	ext := in
	ext.srcPrincipalKnown, ext.mtls, ext.countAtDestination = false, false, true
	ext.src = workload{Unknown, Unknown, Unknown}
	g.observe(&ext)

	v := g.View(time.Minute)
	edges := map[string]GraphEdge{}
	for _, e := range v.Edges {
		edges[e.Source+">"+e.Destination] = e
	}
	if e := edges["default/frontend>default/orders"]; e.Requests != 10 || e.Errors != 1 || e.ErrorRatio != 0.1 || e.MTLS != 1 {
		t.Errorf("frontend>orders = %+v", e)
	}
	if e := edges["default/batch>default/orders"]; e.Requests != 4 {
		t.Errorf("batch>orders = %+v", e)
	}
	if e := edges["unknown>default/orders"]; e.Requests != 1 || e.MTLS != 0 {
		t.Errorf("unknown>orders = %+v", e)
	}
	if len(v.Edges) != 3 {
		t.Errorf("edges: %+v", v.Edges)
	}
	e := edges["default/frontend>default/orders"]
	if e.P50Ms < 8 || e.P50Ms > 12 || e.Rate <= 0 {
		t.Errorf("p50 %v rate %v", e.P50Ms, e.Rate)
	}
	var ids []string
	for _, n := range v.Nodes {
		ids = append(ids, n.ID+"@"+n.Version)
	}
	if want := []string{"default/batch@unknown", "default/frontend@v1", "default/orders@v2", "unknown@unknown"}; !slices.Equal(ids, want) {
		t.Errorf("nodes %v, want %v", ids, want)
	}

	// Signals: what orders' callers saw.
	sig := g.Signals(time.Minute)
	if len(sig) != 1 || sig[0].ID != "default/orders" || sig[0].Requests != 15 {
		t.Fatalf("signals %+v", sig)
	}

	// Out of the window, nothing is left.
	now = now.Add(MaxWindow + 2*SlotWidth)
	g.sweep()
	if v := g.View(MaxWindow); len(v.Edges)+len(v.Nodes) != 0 {
		t.Errorf("after the window: %+v", v)
	}
}

func TestCallerReports(t *testing.T) {
	ix := &catalogIndex{
		sidecars:   map[serviceKeyD]bool{{Namespace: "default", Name: "frontend"}: true, {Namespace: "default", Name: "batch"}: false},
		sidecarIPs: map[netipAddr]bool{mustAddrPort("10.0.0.1:1").Addr(): true},
	}
	a := &attributor{catalog: ix, reporting: fakeReporting{workloads: map[string]bool{"other/api": true}, addrs: map[string]bool{"10.9.9.9": true}}}
	for _, tc := range []struct {
		name    string
		r       report
		reports bool
	}{
		{"caller with a sidecar", report{srcPrincipalKnown: true, src: workload{"default", "frontend", ""}}, true},
		{"proxyless caller", report{srcPrincipalKnown: true, src: workload{"default", "batch", ""}}, false},
		{"caller the catalog lacks, with a stream", report{srcPrincipalKnown: true, src: workload{"other", "api", ""}}, true},
		{"caller the catalog lacks, without one", report{srcPrincipalKnown: true, src: workload{"other", "cron", ""}}, false},
		{"principal of no service", report{srcPrincipalKnown: true, src: workload{"k8s", Unknown, ""}}, false},
		{"plaintext from a sidecar's address", report{downstream: mustAddrPort("10.0.0.1:5000").Addr()}, true},
		{"plaintext from a stream's address", report{downstream: mustAddrPort("10.9.9.9:5000").Addr()}, true},
		{"plaintext from outside", report{downstream: mustAddrPort("192.0.2.1:5000").Addr()}, false},
	} {
		if got := a.callerReports(&tc.r); got != tc.reports {
			t.Errorf("%s: %v", tc.name, got)
		}
	}
}

func TestGraphWindow(t *testing.T) {
	g := newGraph(100)
	now := time.Unix(1_700_000_000, 0)
	g.now = func() time.Time { return now }
	r := &report{kind: kindHTTP, src: workload{"a", "x", "v1"}, dst: workload{"a", "y", "v1"}, durationMs: 1}
	r.labels[lProtocol] = "http"
	g.observe(r)
	now = now.Add(2 * time.Minute)
	g.observe(r)
	if v := g.View(time.Minute); len(v.Edges) != 1 || v.Edges[0].Requests != 1 {
		t.Errorf("1m window: %+v", v.Edges)
	}
	if v := g.View(5 * time.Minute); len(v.Edges) != 1 || v.Edges[0].Requests != 2 || v.WindowSeconds != 300 {
		t.Errorf("5m window: %+v %v", v.Edges, v.WindowSeconds)
	}
}

func TestGraphBounded(t *testing.T) {
	g := newGraph(graphShards)
	for i := range 1000 {
		r := &report{kind: kindHTTP, src: workload{"a", fmt.Sprint(i), "v"}, dst: workload{"a", "y", "v"}}
		r.labels[lProtocol] = "http"
		g.observe(r)
	}
	edges := 0
	for i := range g.shards {
		edges += len(g.shards[i].edges)
	}
	if edges > graphShards || g.Dropped() == 0 {
		t.Fatalf("%d edges, %d dropped", edges, g.Dropped())
	}
}

func TestQuantile(t *testing.T) {
	var b [45]uint32
	for range 100 {
		b[bucketIndex(latencyBounds, 10)]++
	}
	if q := quantile(b[:], 0.5); q < 8 || q > 12 {
		t.Errorf("p50 of 10 ms = %v", q)
	}
	b[bucketIndex(latencyBounds, 1000)] += 2
	if q := quantile(b[:], 0.99); q < 800 || q > 1200 {
		t.Errorf("p99 = %v", q)
	}
}

func TestRBACOutcome(t *testing.T) {
	meta := func(m map[string]any) *core.Metadata {
		s, _ := structpb.NewStruct(m)
		return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{rbacHTTPMeta: s}}
	}
	for _, tc := range []struct {
		name string
		r    report
		want rbacOutcome
	}{
		{"deny rule", report{codeDetail: "rbac_access_denied_matched_policy[default/orders/1]",
			metadata: meta(map[string]any{"deny_enforced_engine_result": "denied", "deny_enforced_effective_policy_id": "default/orders/1"})},
			rbacOutcome{denied: true, deniedRule: "default/orders/1"}},
		{"no allow rule", report{codeDetail: "rbac_access_denied_matched_policy[none]"}, rbacOutcome{denied: true, deniedRule: RuleNone}},
		{"dry-run deny", report{metadata: meta(map[string]any{"deny_dry_run_shadow_engine_result": "denied", "deny_dry_run_shadow_effective_policy_id": "default/orders/2",
			"allow_enforced_engine_result": "allowed", "allow_enforced_effective_policy_id": "default/orders/0"})},
			rbacOutcome{dryDenied: true, dryRule: "default/orders/2", allowedRule: "default/orders/0"}},
		{"network rbac", report{metadata: &core.Metadata{FilterMetadata: map[string]*structpb.Struct{rbacNetworkMeta: mustStruct(map[string]any{
			"enforced_engine_result": "denied", "enforced_effective_policy_id": "default/db/0"})}}},
			rbacOutcome{denied: true, deniedRule: "default/db/0"}},
		{"ext_authz", report{codeDetail: "ext_authz_denied"}, rbacOutcome{deniedByAuth: true}},
	} {
		if got := rbacOf(&tc.r); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}

func TestAuditLog(t *testing.T) {
	var buf bytes.Buffer
	a := NewAuditLog(&buf)
	cfg, diags := config.Parse([]config.File{{Name: "authz.hcl", Content: []byte(`service "orders" {
  protocol = "http"
}
authorization "orders" {
  rule {
    action = "allow"
    audit  = true
    from { namespaces = ["default"] }
  }
  rule {
    action = "deny"
    to { paths = ["/admin/*"] }
  }
}
`)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	a.update(cfg)
	if !a.AuditsAllow("default/orders/0") || a.AuditsAllow("default/orders/1") {
		t.Fatal("AuditsAllow")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	a.Record(AuditRecord{Decision: DecisionDeny, Origin: OriginPolicyd, SourcePrincipal: "spiffe://x", Destination: "default/orders", Method: "GET", Path: "/admin/x", Rule: "default/orders/1"})
	r := &report{inbound: true, codeDetail: "rbac_access_denied_matched_policy[none]", method: "POST", path: "/y",
		src: workload{"default", "frontend", Unknown}, dst: workload{"default", "orders", "v1"}, reporterID: "orders-1"}
	r.labels[lSrcPrincipal] = "spiffe://mesh/ns/default/svc/frontend"
	a.auditReport(r)
	allowed := &report{inbound: true, metadata: &core.Metadata{FilterMetadata: map[string]*structpb.Struct{rbacHTTPMeta: mustStruct(map[string]any{
		"allow_enforced_engine_result": "allowed", "allow_enforced_effective_policy_id": "default/orders/0"})}},
		src: workload{"default", "frontend", Unknown}, dst: workload{"default", "orders", "v1"}}
	a.auditReport(allowed)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var recs []AuditRecord
	for l := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
		var rec AuditRecord
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		recs = append(recs, rec)
	}
	if len(recs) != 3 {
		t.Fatalf("records:\n%s", buf.String())
	}
	if r := recs[0]; r.RuleAt != "authz.hcl:10" || r.Decision != "deny" || r.Origin != "policyd" || r.Time.IsZero() {
		t.Errorf("policyd record %+v", r)
	}
	if r := recs[1]; r.Rule != RuleNone || r.Origin != "proxy" || r.Source != "default/frontend" || r.Reporter != "orders-1" || r.Path != "/y" {
		t.Errorf("proxy record %+v", r)
	}
	if r := recs[2]; r.Decision != "allow" || r.RuleAt != "authz.hcl:5" {
		t.Errorf("allow record %+v", r)
	}
	if got := a.Recent(2); len(got) != 2 || got[0].Decision != "allow" || got[1].Rule != RuleNone {
		t.Errorf("recent %+v", got)
	}
}
