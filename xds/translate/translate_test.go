package translate_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// Focused tests of rules the golden files show but do not name.

func endpointAddrs(cla *endpoint.ClusterLoadAssignment) []string {
	var out []string
	for _, lle := range cla.GetEndpoints() {
		for _, e := range lle.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("p%d %s:%d", lle.GetPriority(), sa.GetAddress(), sa.GetPortValue()))
		}
	}
	return out
}

func TestEDSUsesSidecarPort(t *testing.T) {
	c := loadCase(t, "testdata/sidecar_endpoint_ports")
	res, err := translate.Build(c.input(nil), c.proxy)
	if err != nil {
		t.Fatal(err)
	}
	got := endpointAddrs(find[*endpoint.ClusterLoadAssignment](t, res.Endpoints, "default/api"))
	want := []string{"p0 10.0.4.1:21000", "p0 10.0.4.2:21001", "p0 10.0.4.3:8081"}
	if !slices.Equal(got, want) {
		t.Errorf("endpoints of default/api = %q, want %q", got, want)
	}
}

func TestLoadAssignmentHealth(t *testing.T) {
	ep := func(addr string, h discovery.Health) discovery.Endpoint {
		return discovery.Endpoint{Address: addr, Port: 80, Health: h}
	}
	const (
		ok       = discovery.HealthHealthy
		degraded = discovery.HealthDegraded
		down     = discovery.HealthUnhealthy
	)
	tests := []struct {
		name string
		eps  []discovery.Endpoint
		want []string
	}{
		{"healthy first, degraded as fallback", []discovery.Endpoint{ep("10.0.0.1", ok), ep("10.0.0.2", degraded), ep("10.0.0.3", down)}, []string{"p0 10.0.0.1:80", "p1 10.0.0.2:80"}},
		{"only degraded ones take the traffic", []discovery.Endpoint{ep("10.0.0.2", degraded), ep("10.0.0.3", down)}, []string{"p0 10.0.0.2:80"}},
		{"none left", []discovery.Endpoint{ep("10.0.0.3", down)}, nil},
		{"no endpoints", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "api"}, Protocol: discovery.ProtocolHTTP, Endpoints: tt.eps}
			in := translate.Input{Catalog: discovery.NewSnapshot(nil, []*discovery.Service{svc})}
			res, err := translate.Build(in, translate.Proxy{Kind: translate.KindGRPC, Service: discovery.ServiceKey{Namespace: "default", Name: "c"}, Listeners: []string{"api"}})
			if err != nil {
				t.Fatal(err)
			}
			if err := translate.Check(res); err != nil {
				t.Fatal(err)
			}
			cla := find[*endpoint.ClusterLoadAssignment](t, res.Endpoints, "default/api")
			if got := endpointAddrs(cla); !slices.Equal(got, tt.want) {
				t.Errorf("endpoints = %q, want %q", got, tt.want)
			}
			for _, err := range edsProblems(cla) {
				t.Error(err)
			}
		})
	}
}

// routeOf returns the route configuration an API listener uses.
func routeOf(t *testing.T, l *listener.Listener) string {
	t.Helper()
	m := &hcm.HttpConnectionManager{}
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(m); err != nil {
		t.Fatal(err)
	}
	return m.GetRds().GetRouteConfigName()
}

// A proxyless client that asks for every service gets listeners only for
// services that exist, named the way its own dial targets resolve: a bare
// name in its own namespace, name.namespace everywhere.
func TestProxylessAllServices(t *testing.T) {
	services := func() []*discovery.Service {
		return []*discovery.Service{
			{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "greeter"}, Protocol: discovery.ProtocolGRPC},
			{ServiceKey: discovery.ServiceKey{Namespace: "payments", Name: "ledger"}, Protocol: discovery.ProtocolGRPC},
			// Service names may contain dots.
			{ServiceKey: discovery.ServiceKey{Namespace: "payments", Name: "api.v2"}, Protocol: discovery.ProtocolGRPC},
		}
	}
	for ns, want := range map[string]map[string]string{
		"default":  {"greeter": "default/greeter", "greeter.default": "default/greeter", "ledger.payments": "payments/ledger", "api.v2.payments": "payments/api.v2"},
		"payments": {"ledger": "payments/ledger", "greeter.default": "default/greeter", "ledger.payments": "payments/ledger", "api.v2": "payments/api.v2", "api.v2.payments": "payments/api.v2"},
		"":         {"greeter": "default/greeter", "greeter.default": "default/greeter", "ledger.payments": "payments/ledger", "api.v2.payments": "payments/api.v2"},
	} {
		t.Run("namespace="+ns, func(t *testing.T) {
			snap := discovery.NewSnapshot(nil, services())
			res, err := translate.Build(translate.Input{Catalog: snap}, translate.Proxy{
				Kind: translate.KindGRPC, Service: discovery.ServiceKey{Namespace: ns, Name: "client"}, AllServices: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, r := range res.Listeners {
				got[translate.ResourceName(r)] = routeOf(t, r.(*listener.Listener))
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("listeners → routes = %v, want %v", got, want)
			}
			for _, r := range res.Clusters {
				if _, ok := snap.Service(discovery.ParseServiceKey(translate.ResourceName(r), "")); !ok {
					t.Errorf("all_services produced cluster %s, whose service is not in the catalog", translate.ResourceName(r))
				}
			}
		})
	}
}

// A target "name.namespace" whose service does not exist yet resolves to a
// service of that full name in the proxy's namespace; the proxy must still
// depend on name.namespace so that it is rebuilt when that service appears.
func TestProxylessTargetDependsOnNamespacedService(t *testing.T) {
	greeter := discovery.ServiceKey{Namespace: "default", Name: "greeter"}
	p := translate.Proxy{Kind: translate.KindGRPC, Service: discovery.ServiceKey{Namespace: "payments", Name: "client"}, Listeners: []string{"greeter.default"}}

	before, err := translate.Build(translate.Input{Catalog: discovery.NewSnapshot(nil, nil)}, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := translate.Check(before); err != nil {
		t.Fatal(err)
	}
	if got := routeOf(t, before.Listeners[0].(*listener.Listener)); got != "payments/greeter.default" {
		t.Errorf("before: listener uses %q, want payments/greeter.default", got)
	}
	if !slices.Contains(before.Services, greeter) {
		t.Errorf("before: Services = %v, want it to include %s", before.Services, greeter)
	}

	after, err := translate.Build(translate.Input{Catalog: discovery.NewSnapshot(nil, []*discovery.Service{{ServiceKey: greeter, Protocol: discovery.ProtocolGRPC}})}, p)
	if err != nil {
		t.Fatal(err)
	}
	if got := routeOf(t, after.Listeners[0].(*listener.Listener)); got != "default/greeter" {
		t.Errorf("after: listener uses %q, want default/greeter", got)
	}
	if !slices.Equal(after.Services, []discovery.ServiceKey{greeter}) {
		t.Errorf("after: Services = %v, want [%s]", after.Services, greeter)
	}
}

func TestProxylessIgnoresInvalidTargets(t *testing.T) {
	res, err := translate.Build(translate.Input{Catalog: discovery.NewSnapshot(nil, nil)}, translate.Proxy{
		Kind: translate.KindGRPC, Listeners: []string{"", "a/b", "host:443", "xdstp://x/y"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Listeners)+len(res.Clusters)+len(res.Services) != 0 {
		t.Errorf("got listeners %d, clusters %d, services %v; want none", len(res.Listeners), len(res.Clusters), res.Services)
	}
}

func TestBuildErrors(t *testing.T) {
	a := discovery.ServiceKey{Namespace: "default", Name: "a"}
	b := discovery.ServiceKey{Namespace: "default", Name: "b"}
	tests := []struct {
		name string
		p    translate.Proxy
		want string
	}{
		{"unknown kind", translate.Proxy{Kind: "istio"}, `unknown proxy kind "istio"`},
		{"two upstreams on one local port", translate.Proxy{Kind: translate.KindSidecar, Upstreams: []discovery.Upstream{{Service: a, LocalPort: 9000}, {Service: b, LocalPort: 9000}}}, "both use local port 9000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := translate.Build(translate.Input{Catalog: discovery.NewSnapshot(nil, nil)}, tt.p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build error = %v, want one containing %q", err, tt.want)
			}
		})
	}

	// The same upstream declared twice (catalog and proxy) is one listener.
	res, err := translate.Build(translate.Input{Catalog: discovery.NewSnapshot(nil, nil)}, translate.Proxy{
		Kind: translate.KindSidecar, Upstreams: []discovery.Upstream{{Service: a, LocalPort: 9000}, {Service: a, LocalPort: 9000}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Listeners) != 1 {
		t.Errorf("got %d listeners, want 1", len(res.Listeners))
	}
}

// A sidecar whose service the catalog does not know still gets its inbound
// listener when the proxy names the ports, as plain TCP.
func TestSidecarOfUnknownService(t *testing.T) {
	res, err := translate.Build(translate.Input{Catalog: discovery.NewSnapshot(nil, nil)}, translate.Proxy{
		Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: "default", Name: "batch"}, InboundPort: 21000, LocalPort: 8080,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := translate.Check(res); err != nil {
		t.Fatal(err)
	}
	l := find[*listener.Listener](t, res.Listeners, "inbound")
	if f := l.GetFilterChains()[0].GetFilters()[0].GetName(); f != wellknown.TCPProxy {
		t.Errorf("inbound filter = %s, want %s", f, wellknown.TCPProxy)
	}
	if len(res.Services) != 0 {
		t.Errorf("Services = %v, want none", res.Services)
	}
}
