package translate_test

import (
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// checkCatalog is the catalog the Check table starts from: web (http) with a
// sidecar and two upstreams, greeter (grpc) and db (tcp).
const checkCatalog = `
service "web" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
  upstream "greeter" {
    local_port = 9001
  }
  upstream "db" {
    local_port = 9002
  }
}
service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.1.1"
    port    = 50051
  }
}
service "db" {
  endpoint {
    address = "10.0.3.1"
    port    = 5432
  }
}
`

var (
	checkSidecar = translate.Proxy{Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: "default", Name: "web"}}
	checkGRPC    = translate.Proxy{Kind: translate.KindGRPC, Service: discovery.ServiceKey{Namespace: "default", Name: "client"}, Listeners: []string{"greeter"}}
)

// buildHCL translates services declared in HCL for one proxy.
func buildHCL(t *testing.T, src string, p translate.Proxy) *translate.Resources {
	t.Helper()
	cfg, diags := config.Parse([]config.File{{Name: "test.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	res, err := translate.Build(translate.Input{Catalog: discovery.NewSnapshot(nil, file.Convert(cfg)), Config: cfg}, p)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return res
}

func find[T proto.Message](t *testing.T, list []types.Resource, name string) T {
	t.Helper()
	for _, r := range list {
		if translate.ResourceName(r) == name {
			return r.(T)
		}
	}
	t.Fatalf("no resource %q", name)
	var zero T
	return zero
}

func remove(list []types.Resource, name string) []types.Resource {
	return slices.DeleteFunc(list, func(r types.Resource) bool { return translate.ResourceName(r) == name })
}

// repack unpacks the config of a listener's first filter (or its API
// listener), lets edit change it, and packs it back.
func repack[T proto.Message](t *testing.T, res *translate.Resources, listenerName string, edit func(T)) {
	t.Helper()
	l := find[*listener.Listener](t, res.Listeners, listenerName)
	var slot **anypb.Any
	if l.GetApiListener() != nil {
		slot = &l.ApiListener.ApiListener
	} else {
		slot = &l.GetFilterChains()[0].GetFilters()[0].ConfigType.(*listener.Filter_TypedConfig).TypedConfig
	}
	m, err := (*slot).UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	edit(m.(T))
	if *slot, err = anypb.New(m); err != nil {
		t.Fatal(err)
	}
}

func routeAction(t *testing.T, res *translate.Resources, name string) *route.RouteAction {
	t.Helper()
	return find[*route.RouteConfiguration](t, res.Routes, name).GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name   string
		proxy  translate.Proxy
		mutate func(t *testing.T, r *translate.Resources)
		want   []string // substrings of the error; none: Check must pass
	}{
		{name: "sidecar as built", proxy: checkSidecar},
		{name: "proxyless as built", proxy: checkGRPC},
		{
			name:  "route names a missing cluster",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				routeAction(t, r, "default/greeter").ClusterSpecifier = &route.RouteAction_Cluster{Cluster: "default/nope"}
			},
			want: []string{`route configuration "default/greeter" route default refers to cluster "default/nope", which does not exist`},
		},
		{
			name:  "weighted split names a missing cluster",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				routeAction(t, r, "default/greeter").ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{
					Clusters: []*route.WeightedCluster_ClusterWeight{
						{Name: "default/greeter", Weight: wrapperspb.UInt32(90)},
						{Name: "default/greeter-canary", Weight: wrapperspb.UInt32(10)},
					},
				}}
			},
			want: []string{`refers to cluster "default/greeter-canary"`},
		},
		{
			name:  "mirror names a missing cluster",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				a := routeAction(t, r, "default/greeter")
				a.RequestMirrorPolicies = append(a.RequestMirrorPolicies, &route.RouteAction_RequestMirrorPolicy{Cluster: "default/shadow"})
			},
			want: []string{`mirror refers to cluster "default/shadow"`},
		},
		{
			name:  "inline inbound route names a missing cluster",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				repack(t, r, "inbound", func(m *hcm.HttpConnectionManager) {
					m.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRoute().ClusterSpecifier = &route.RouteAction_Cluster{Cluster: "local_gone"}
				})
			},
			want: []string{`listener "inbound" route default refers to cluster "local_gone"`},
		},
		{
			name:  "tcp_proxy names a missing cluster",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				r.Clusters = remove(r.Clusters, "default/db")
				r.Endpoints = remove(r.Endpoints, "default/db")
			},
			want: []string{`listener "outbound|9002|default/db" refers to cluster "default/db", which does not exist`},
		},
		{
			name:  "listener RDS names a missing route configuration",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				r.Routes = remove(r.Routes, "default/greeter")
			},
			want: []string{`listener "outbound|9001|default/greeter" refers to route configuration "default/greeter", which does not exist`},
		},
		{
			name:  "API listener RDS names a missing route configuration",
			proxy: checkGRPC,
			mutate: func(t *testing.T, r *translate.Resources) {
				repack(t, r, "greeter", func(m *hcm.HttpConnectionManager) { m.GetRds().RouteConfigName = "default/gone" })
			},
			want: []string{`listener "greeter" refers to route configuration "default/gone", which does not exist`},
		},
		{
			name:  "EDS cluster without its ClusterLoadAssignment",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				r.Endpoints = remove(r.Endpoints, "default/greeter")
			},
			want: []string{`cluster "default/greeter" has no endpoints resource "default/greeter"`},
		},
		{
			name:  "EDS service name without a ClusterLoadAssignment",
			proxy: checkGRPC,
			mutate: func(t *testing.T, r *translate.Resources) {
				find[*cluster.Cluster](t, r.Clusters, "default/greeter").GetEdsClusterConfig().ServiceName = "default/greeter-v2"
			},
			want: []string{`cluster "default/greeter" has no endpoints resource "default/greeter-v2"`},
		},
		{
			name:  "endpoints of no cluster",
			proxy: checkGRPC,
			mutate: func(t *testing.T, r *translate.Resources) {
				r.Endpoints = append(r.Endpoints, &endpoint.ClusterLoadAssignment{ClusterName: "default/orphan"})
			},
			want: []string{`endpoints "default/orphan" belong to no cluster`},
		},
		{
			name:  "HTTP connection manager without filters",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				repack(t, r, "inbound", func(m *hcm.HttpConnectionManager) { m.HttpFilters = nil })
			},
			want: []string{`listener "inbound": the router must be the last HTTP filter`},
		},
		{
			name:  "router not last",
			proxy: checkGRPC,
			mutate: func(t *testing.T, r *translate.Resources) {
				repack(t, r, "greeter", func(m *hcm.HttpConnectionManager) {
					m.HttpFilters = append(m.HttpFilters, &hcm.HttpFilter{
						Name:       "envoy.filters.http.fault",
						ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &fault.HTTPFault{})},
					})
				})
			},
			want: []string{`listener "greeter": the router must be the last HTTP filter`},
		},
		{
			name:  "cluster with an empty name fails ValidateAll",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				r.Clusters = append(r.Clusters, &cluster.Cluster{ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}})
			},
			want: []string{`*clusterv3.Cluster ""`, "Cluster.Name: value length must be at least 1"},
		},
		{
			name:  "locality of weight 0 fails ValidateAll",
			proxy: checkGRPC,
			mutate: func(t *testing.T, r *translate.Resources) {
				find[*endpoint.ClusterLoadAssignment](t, r.Endpoints, "default/greeter").GetEndpoints()[0].LoadBalancingWeight = wrapperspb.UInt32(0)
			},
			want: []string{`*endpointv3.ClusterLoadAssignment "default/greeter"`, "LoadBalancingWeight"},
		},
		{
			name:  "listener port out of range fails ValidateAll",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				find[*listener.Listener](t, r.Listeners, "inbound").GetAddress().GetSocketAddress().PortSpecifier = &core.SocketAddress_PortValue{PortValue: 70000}
			},
			want: []string{`*listenerv3.Listener "inbound"`, "PortValue"},
		},
		{
			// protoc-gen-validate does not look inside Any: the filter
			// configs must be validated on their own.
			name:  "HTTP connection manager without stat_prefix",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				repack(t, r, "outbound|9001|default/greeter", func(m *hcm.HttpConnectionManager) { m.StatPrefix = "" })
			},
			want: []string{`*listenerv3.Listener "outbound|9001|default/greeter"`, "HttpConnectionManager.StatPrefix"},
		},
		{
			name:  "tcp_proxy without stat_prefix",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				repack(t, r, "outbound|9002|default/db", func(m *tcpproxy.TcpProxy) { m.StatPrefix = "" })
			},
			want: []string{`*listenerv3.Listener "outbound|9002|default/db"`, "TcpProxy.StatPrefix"},
		},
		{
			name:  "every problem is reported, not only the first",
			proxy: checkSidecar,
			mutate: func(t *testing.T, r *translate.Resources) {
				routeAction(t, r, "default/greeter").ClusterSpecifier = &route.RouteAction_Cluster{Cluster: "default/nope"}
				r.Endpoints = remove(r.Endpoints, "default/db")
				r.Clusters = append(r.Clusters, &cluster.Cluster{})
			},
			want: []string{`refers to cluster "default/nope"`, `cluster "default/db" has no endpoints resource`, "Cluster.Name"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := buildHCL(t, checkCatalog, tt.proxy)
			if tt.mutate != nil {
				tt.mutate(t, res)
			}
			err := translate.Check(res)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Check passed; want an error containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check error does not mention %q:\n%v", w, err)
				}
			}
			t.Logf("reported:\n%v", err)
		})
	}
}
