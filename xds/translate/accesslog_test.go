package translate_test

import (
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	als "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

const telemetryServices = `
service "orders" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
  upstream "payments" {
    local_port = 9001
  }
  upstream "ledger" {
    local_port = 9002
  }
}
service "payments" {
  protocol = "grpc"
  endpoint {
    address = "10.0.1.1"
    port    = 50051
  }
}
service "ledger" {
  protocol = "tcp"
  endpoint {
    address = "10.0.2.1"
    port    = 5432
  }
}
authorization "orders" {
  enforce = "both"
  rule {
    action = "allow"
    from { namespaces = ["default"] }
  }
}
`

func telemetryInput(t *testing.T, extra string) translate.Input {
	t.Helper()
	src := "mesh {\n  policyd {\n    address = \"127.0.0.1:15020\"\n  }\n}\n" + extra + telemetryServices
	cfg, diags := config.Parse([]config.File{{Name: "t.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	return translate.Input{Catalog: discovery.NewSnapshot(nil, file.Convert(cfg)), Config: cfg}
}

var ordersSidecar = translate.Proxy{Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: "default", Name: "orders"}}

// accessLogs returns, per listener, the log names of its access logs and
// whether a tracer is set.
func accessLogs(t *testing.T, res *translate.Resources) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, r := range res.Listeners {
		l := r.(*listener.Listener)
		for _, f := range l.GetFilterChains()[0].GetFilters() {
			m, p := &hcm.HttpConnectionManager{}, &tcpproxy.TcpProxy{}
			var names []string
			switch a := f.GetTypedConfig(); {
			case a.MessageIs(m):
				if err := a.UnmarshalTo(m); err != nil {
					t.Fatal(err)
				}
				for _, al := range m.GetAccessLog() {
					c := &als.HttpGrpcAccessLogConfig{}
					if err := al.GetTypedConfig().UnmarshalTo(c); err != nil {
						t.Fatal(err)
					}
					names = append(names, "http:"+c.GetCommonConfig().GetLogName())
				}
				if m.GetTracing() != nil {
					names = append(names, "tracing")
				}
			case a.MessageIs(p):
				if err := a.UnmarshalTo(p); err != nil {
					t.Fatal(err)
				}
				for _, al := range p.GetAccessLog() {
					c := &als.TcpGrpcAccessLogConfig{}
					if err := al.GetTypedConfig().UnmarshalTo(c); err != nil {
						t.Fatal(err)
					}
					names = append(names, "tcp:"+c.GetCommonConfig().GetLogName())
				}
			default:
				continue
			}
			out[l.GetName()] = names
		}
	}
	return out
}

func clusterNames(list []types.Resource) []string {
	var out []string
	for _, r := range list {
		out = append(out, r.(*cluster.Cluster).GetName())
	}
	return out
}

func TestAccessLogsOnEveryListener(t *testing.T) {
	in := telemetryInput(t, "")
	res, err := translate.Build(in, ordersSidecar)
	if err != nil {
		t.Fatal(err)
	}
	if err := translate.Check(res); err != nil {
		t.Fatal(err)
	}
	got := accessLogs(t, res)
	want := map[string][]string{
		"inbound":                        {"http:" + translate.AccessLogInbound},
		"outbound|9001|default/payments": {"http:" + translate.AccessLogOutbound},
		"outbound|9002|default/ledger":   {"tcp:" + translate.AccessLogOutbound},
	}
	for name, w := range want {
		if !slices.Equal(got[name], w) {
			t.Errorf("listener %s: access logs %v, want %v", name, got[name], w)
		}
	}
	if n := strings.Count(strings.Join(clusterNames(res.Clusters), " "), translate.PolicydCluster); n != 1 {
		t.Fatalf("clusters %v: want one %q", clusterNames(res.Clusters), translate.PolicydCluster)
	}
}

func TestAccessLogsDisabled(t *testing.T) {
	in := telemetryInput(t, "telemetry {\n  enabled = false\n}\n")
	res, err := translate.Build(in, ordersSidecar)
	if err != nil {
		t.Fatal(err)
	}
	for name, logs := range accessLogs(t, res) {
		if len(logs) != 0 {
			t.Errorf("listener %s has %v with telemetry disabled", name, logs)
		}
	}
	// ext_authz still needs the policyd cluster.
	if !slices.Contains(clusterNames(res.Clusters), translate.PolicydCluster) {
		t.Fatalf("no policyd cluster for ext_authz: %v", clusterNames(res.Clusters))
	}
}

// The server builds a sidecar in two parts. The outbound part carries the
// policyd cluster (even with no upstream, for the inbound access log); the
// inbound part, although ext_authz is on, leaves it out: joined, there is
// exactly one, and the joined configuration is consistent.
func TestTelemetryParts(t *testing.T) {
	in := telemetryInput(t, "telemetry {\n  tracing {\n    otlp_address = \"10.9.9.9:4317\"\n  }\n}\n")
	whole, err := translate.Build(in, ordersSidecar)
	if err != nil {
		t.Fatal(err)
	}
	outSpec := ordersSidecar
	outSpec.Part = translate.PartOutbound
	outSpec.Service = discovery.ServiceKey{Namespace: "default"}
	outSpec.Upstreams = []discovery.Upstream{
		{Service: discovery.ServiceKey{Namespace: "default", Name: "payments"}, LocalPort: 9001},
		{Service: discovery.ServiceKey{Namespace: "default", Name: "ledger"}, LocalPort: 9002},
	}
	inSpec := ordersSidecar
	inSpec.Part = translate.PartInbound
	out, err := translate.Build(in, outSpec)
	if err != nil {
		t.Fatal(err)
	}
	inb, err := translate.Build(in, inSpec)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(clusterNames(inb.Clusters), translate.PolicydCluster) {
		t.Errorf("inbound part has the policyd cluster: %v", clusterNames(inb.Clusters))
	}
	for _, name := range []string{translate.PolicydCluster, translate.TracingCluster} {
		if !slices.Contains(clusterNames(out.Clusters), name) {
			t.Errorf("outbound part lacks %s: %v", name, clusterNames(out.Clusters))
		}
	}
	joined := &translate.Resources{
		Listeners: append(slices.Clone(out.Listeners), inb.Listeners...),
		Routes:    append(slices.Clone(out.Routes), inb.Routes...),
		Clusters:  append(slices.Clone(out.Clusters), inb.Clusters...),
		Endpoints: append(slices.Clone(out.Endpoints), inb.Endpoints...),
	}
	if err := translate.Check(joined); err != nil {
		t.Fatalf("joined parts: %v", err)
	}
	if a, b := clusterNames(joined.Clusters), clusterNames(whole.Clusters); len(a) != len(b) {
		t.Fatalf("joined clusters %v, whole %v", a, b)
	}
	if got := accessLogs(t, inb)["inbound"]; !slices.Equal(got, []string{"http:" + translate.AccessLogInbound, "tracing"}) {
		t.Fatalf("inbound part: %v", got)
	}

	// An outbound part with no upstream still carries the clusters.
	outSpec.Upstreams = nil
	bare, err := translate.Build(in, outSpec)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(clusterNames(bare.Clusters), translate.PolicydCluster) {
		t.Fatalf("bare outbound part: %v", clusterNames(bare.Clusters))
	}
}

// Proxyless gRPC has no access log service: it gets neither logs nor
// telemetry clusters.
func TestTelemetryNotForProxyless(t *testing.T) {
	in := telemetryInput(t, "telemetry {\n  tracing {\n    otlp_address = \"10.9.9.9:4317\"\n  }\n}\n")
	res, err := translate.Build(in, translate.Proxy{Kind: translate.KindGRPC, Service: discovery.ServiceKey{Namespace: "default", Name: "client"}, Listeners: []string{"payments"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range clusterNames(res.Clusters) {
		if name == translate.PolicydCluster || name == translate.TracingCluster {
			t.Fatalf("proxyless client got %s", name)
		}
	}
}

// Check reports an access log whose cluster is missing.
func TestCheckTelemetryClusters(t *testing.T) {
	in := telemetryInput(t, "")
	res, err := translate.Build(in, ordersSidecar)
	if err != nil {
		t.Fatal(err)
	}
	res.Clusters = slices.DeleteFunc(res.Clusters, func(r types.Resource) bool {
		return r.(*cluster.Cluster).GetName() == translate.PolicydCluster
	})
	err = translate.Check(res)
	if err == nil || !strings.Contains(err.Error(), `access log envoy.access_loggers.http_grpc refers to cluster "policyd"`) {
		t.Fatalf("Check: %v", err)
	}
}
