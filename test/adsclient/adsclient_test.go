package adsclient

import (
	"slices"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Light mode reads names and EDS references from the wire; it must agree
// with decoding.
func TestLightAgreesWithDecoding(t *testing.T) {
	eds := func(name, service string) *cluster.Cluster {
		return &cluster.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{ServiceName: service, EdsConfig: &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}},
		}
	}
	resources := map[string]proto.Message{
		"default/api":  eds("default/api", ""),
		"default/web":  eds("default/web", "web-eds"),
		"local_app":    &cluster.Cluster{Name: "local_app", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}},
		"original-dst": &cluster.Cluster{Name: "original-dst"},
	}
	c := New(Options{Light: true})
	changed := map[string]*anypb.Any{}
	for name, m := range resources {
		a := mustAny(t, m)
		if got := wireName(a.GetValue()); got != name {
			t.Errorf("wireName = %q, want %q", got, name)
		}
		if got, want := wireName(a.GetValue()), resourceName(resourcev3.ClusterType, a); got != want {
			t.Errorf("wireName = %q, resourceName = %q", got, want)
		}
		changed[name] = a
	}
	_, want := dependents(resourcev3.ClusterType, changed)
	dt, got := c.lightDependents(resourcev3.ClusterType, changed, nil)
	if dt != resourcev3.EndpointType || !slices.Equal(got, want) {
		t.Errorf("lightDependents = %s %q, want %q", dt, got, want)
	}
	// A removed cluster takes its EDS name with it.
	_, got = c.lightDependents(resourcev3.ClusterType, nil, []string{"default/web"})
	if !slices.Equal(got, []string{"default/api"}) {
		t.Errorf("after removal: %q", got)
	}

	cla := mustAny(t, &endpoint.ClusterLoadAssignment{ClusterName: "default/api"})
	if got := wireName(cla.GetValue()); got != "default/api" {
		t.Errorf("wireName of a ClusterLoadAssignment = %q", got)
	}
	l := mustAny(t, &listener.Listener{Name: "inbound"})
	if got := wireName(l.GetValue()); got != "inbound" {
		t.Errorf("wireName of a listener = %q", got)
	}
}
