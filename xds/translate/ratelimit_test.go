package translate_test

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// envoyRewrite applies a RegexMatchAndSubstitute the way Envoy does (RE2
// GlobalReplace, \N for groups) with Go's regexp, which is RE2 too.
func envoyRewrite(rw [2]string, value string) string {
	subst := regexp.MustCompile(`\\(\d)`).ReplaceAllString(rw[1], `$${$1}`)
	return regexp.MustCompile(rw[0]).ReplaceAllString(value, subst)
}

// The caller's identity is cut out of x-forwarded-client-cert as set by
// SANITIZE_SET (By, Hash, URI); a value without a mesh identity gives ""
// (Envoy then sets no metadata, and the limit does not count the request).
func TestXFCCRewrites(t *testing.T) {
	for _, tc := range []struct{ xfcc, source, principal string }{
		{"By=spiffe://mesh.test/ns/default/svc/orders;Hash=4f1c;URI=spiffe://mesh.test/ns/default/svc/web",
			"default/web", "spiffe://mesh.test/ns/default/svc/web"},
		{"Hash=4f1c;URI=spiffe://mesh.test/ns/shop/sa/frontend", "shop/frontend", "spiffe://mesh.test/ns/shop/sa/frontend"},
		{"URI=spiffe://td/ns/a.b/svc/c-d", "a.b/c-d", "spiffe://td/ns/a.b/svc/c-d"},
		{"By=spiffe://td/ns/default/svc/orders;Hash=4f1c;Subject=\"CN=x\";URI=spiffe://td/ns/default/svc/web;DNS=web",
			"default/web", "spiffe://td/ns/default/svc/web"},
		{"By=spiffe://td/ns/default/svc/orders;Hash=4f1c", "", ""},
		{"Hash=4f1c;URI=https://example.com/x", "", ""},
		{"Hash=4f1c;URI=spiffe://td/ns/default/svc/web/extra", "", "spiffe://td/ns/default/svc/web/extra"},
	} {
		if got := envoyRewrite(translate.XFCCSourceRewrite, tc.xfcc); got != tc.source {
			t.Errorf("source of %q = %q, want %q", tc.xfcc, got, tc.source)
		}
		if got := envoyRewrite(translate.XFCCPrincipalRewrite, tc.xfcc); got != tc.principal {
			t.Errorf("principal of %q = %q, want %q", tc.xfcc, got, tc.principal)
		}
	}
}

// A limit's match becomes header matchers on :path (with any query
// string), :method and the headers.
func TestRateLimitMatchHeaders(t *testing.T) {
	full := func(re string) *regexp.Regexp { return regexp.MustCompile("^(?:" + re + ")$") }
	hs := translate.MatchHeaders(&config.RouteMatch{PathExact: "/a.b", Methods: []string{"GET"}})
	if len(hs) != 2 || hs[0].GetName() != ":path" || hs[1].GetName() != ":method" {
		t.Fatalf("matchers = %v", hs)
	}
	re := full(hs[0].GetStringMatch().GetSafeRegex().GetRegex())
	for p, want := range map[string]bool{"/a.b": true, "/a.b?x=1": true, "/axb": false, "/a.b/c": false} {
		if re.MatchString(p) != want {
			t.Errorf("exact /a.b on %q: %v", p, !want)
		}
	}
	hs = translate.MatchHeaders(&config.RouteMatch{PathRegex: "/v[0-9]+/x"})
	re = full(hs[0].GetStringMatch().GetSafeRegex().GetRegex())
	for p, want := range map[string]bool{"/v1/x": true, "/v12/x?q": true, "/v/x": false} {
		if re.MatchString(p) != want {
			t.Errorf("regex on %q: %v", p, !want)
		}
	}
	if hs := translate.MatchHeaders(&config.RouteMatch{PathPrefix: "/"}); len(hs) != 0 {
		t.Fatalf("prefix / matches every request: %v", hs)
	}
}

func rlInput(t *testing.T, src string) translate.Input {
	t.Helper()
	cfg, diags := config.Parse([]config.File{{Name: "limits.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	return translate.Input{Catalog: discovery.NewSnapshot(nil, file.Convert(cfg)), Config: cfg}
}

const rlServices = `
mesh {
  policyd {
    address = "127.0.0.1:15020"
  }
}
telemetry {
  enabled = false
}
service "orders" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
}
service "ledger" {
  endpoint {
    address      = "10.0.0.11"
    port         = 5432
    sidecar_port = 21001
  }
}
service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.0.12"
    port    = 50051
  }
}
rate_limit "orders" {
  global {
    requests = 10
    per      = "1s"
  }
}
rate_limit "ledger" {
  global {
    requests = 10
    per      = "1s"
  }
  local {
    requests = 10
    per      = "1s"
  }
}
rate_limit "greeter" {
  local {
    requests = 10
    per      = "1s"
  }
}
`

func httpFilterNames(t *testing.T, res *translate.Resources, name string) []string {
	t.Helper()
	for _, r := range res.Listeners {
		l := r.(*listener.Listener)
		if l.GetName() != name {
			continue
		}
		var out []string
		for _, f := range l.GetFilterChains()[0].GetFilters() {
			m := &hcm.HttpConnectionManager{}
			if f.GetTypedConfig().UnmarshalTo(m) == nil {
				for _, hf := range m.GetHttpFilters() {
					out = append(out, hf.GetName())
				}
			} else {
				out = append(out, f.GetName())
			}
		}
		return out
	}
	t.Fatalf("no listener %q", name)
	return nil
}

// The server builds sidecars in two parts; the inbound part carries the
// policyd cluster for the rate limit filter (telemetry, off here, would
// carry it in the outbound part), and the joined parts are consistent.
func TestRateLimitParts(t *testing.T) {
	in := rlInput(t, rlServices)
	orders := translate.Proxy{Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: "default", Name: "orders"}}
	whole, err := translate.Build(in, orders)
	if err != nil {
		t.Fatal(err)
	}
	if err := translate.Check(whole); err != nil {
		t.Fatal(err)
	}
	if got := httpFilterNames(t, whole, "inbound"); !slices.Equal(got, []string{translate.RateLimitFilter, "envoy.filters.http.router"}) {
		t.Fatalf("inbound filters = %v", got)
	}
	outSpec, inSpec := orders, orders
	outSpec.Part, inSpec.Part = translate.PartOutbound, translate.PartInbound
	outSpec.Service = discovery.ServiceKey{Namespace: "default"}
	out, err := translate.Build(in, outSpec)
	if err != nil {
		t.Fatal(err)
	}
	inb, err := translate.Build(in, inSpec)
	if err != nil {
		t.Fatal(err)
	}
	joined := &translate.Resources{
		Listeners: append(slices.Clone(out.Listeners), inb.Listeners...),
		Clusters:  append(slices.Clone(out.Clusters), inb.Clusters...),
		Endpoints: append(slices.Clone(out.Endpoints), inb.Endpoints...),
	}
	if err := translate.Check(joined); err != nil {
		t.Fatalf("joined parts: %v", err)
	}
	if n := strings.Count(strings.Join(clusterNames(joined.Clusters), " "), translate.PolicydCluster); n != 1 {
		t.Fatalf("joined clusters %v: want one policyd", clusterNames(joined.Clusters))
	}

	// Check reports a rate limit filter whose cluster is missing.
	whole.Clusters = slices.DeleteFunc(slices.Clone(whole.Clusters), func(r types.Resource) bool {
		return r.(*cluster.Cluster).GetName() == translate.PolicydCluster
	})
	if err := translate.Check(whole); err == nil || !strings.Contains(err.Error(), `rate limit filter refers to cluster "policyd"`) {
		t.Fatalf("Check: %v", err)
	}
}

// TCP services and proxyless gRPC get no rate limit filters (config warns).
func TestRateLimitNotForTCPOrProxyless(t *testing.T) {
	in := rlInput(t, rlServices)
	ledger, err := translate.Build(in, translate.Proxy{Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: "default", Name: "ledger"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := httpFilterNames(t, ledger, "inbound"); !slices.Equal(got, []string{"envoy.filters.network.tcp_proxy"}) {
		t.Fatalf("TCP inbound filters = %v", got)
	}
	if slices.Contains(clusterNames(ledger.Clusters), translate.PolicydCluster) {
		t.Fatal("a TCP sidecar got the policyd cluster for rate limits")
	}
	grpc, err := translate.Build(in, translate.Proxy{Kind: translate.KindGRPC, Service: discovery.ServiceKey{Namespace: "default", Name: "greeter"},
		Listeners: []string{translate.ServerListenerPrefix + "0.0.0.0:50051"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(grpc.Listeners) == 0 {
		t.Fatal("no listener for the gRPC server")
	}
	for _, r := range grpc.Listeners {
		for _, fc := range r.(*listener.Listener).GetFilterChains() {
			for _, f := range fc.GetFilters() {
				m := &hcm.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(m) != nil {
					continue
				}
				for _, hf := range m.GetHttpFilters() {
					if strings.Contains(hf.GetName(), "ratelimit") {
						t.Fatalf("gRPC server listener got %s", hf.GetName())
					}
				}
			}
		}
	}
}
