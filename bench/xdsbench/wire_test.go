package xdsbench

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
)

func lbEndpoint(addr string, port uint32) *endpoint.LbEndpoint {
	return &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
		}}},
	}}}
}

func TestMarkerGeneration(t *testing.T) {
	cla := &endpoint.ClusterLoadAssignment{
		ClusterName: "default/svc-0007",
		Endpoints: []*endpoint.LocalityLbEndpoints{
			{Locality: &core.Locality{Zone: "a"}, LbEndpoints: []*endpoint.LbEndpoint{lbEndpoint("10.0.7.1", AppPort), lbEndpoint("10.0.7.3", MarkerBase+42)}},
			{Priority: 1, LbEndpoints: []*endpoint.LbEndpoint{lbEndpoint("10.0.7.2", SidecarPort)}},
		},
	}
	b, err := proto.Marshal(cla)
	if err != nil {
		t.Fatal(err)
	}
	if g := markerGeneration(b); g != 42 {
		t.Errorf("markerGeneration = %d, want 42", g)
	}
	cla.Endpoints[0].LbEndpoints = cla.Endpoints[0].LbEndpoints[:1]
	b, _ = proto.Marshal(cla)
	if g := markerGeneration(b); g != -1 {
		t.Errorf("markerGeneration without a marker = %d, want -1", g)
	}
	if g := markerGeneration([]byte{0xff, 0xff}); g != -1 {
		t.Errorf("markerGeneration of garbage = %d, want -1", g)
	}
}

func TestServiceIndex(t *testing.T) {
	for name, want := range map[string]int{
		"default/svc-0001": 1,
		"svc-0999.default.dc1.internal.0c1b5b8a-1c5f-4a8a-9f1e-6d3c1c1e2f3a.consul": 999,
		"local_app":             -1,
		"original-destination":  -1,
		"default/svc-":          -1,
		"ns/svc-12345/subset-a": 12345,
	} {
		if got := ServiceIndex(name); got != want {
			t.Errorf("ServiceIndex(%q) = %d, want %d", name, got, want)
		}
	}
}
