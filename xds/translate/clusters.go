package translate

import (
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bowlinemesh/bowline/discovery"
)

const (
	defaultConnectTimeout = 5 * time.Second
	httpOptionsKey        = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// buildCluster is the EDS cluster of a service. TLS to the upstream (SDS)
// goes in its transport socket.
func buildCluster(svc *discovery.Service) *cluster.Cluster {
	name := ClusterName(svc.ServiceKey)
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
	setProtocolOptions(c, svc.Protocol)
	return c
}

// buildLocalAppCluster reaches the application beside the sidecar.
func buildLocalAppCluster(port uint32, proto discovery.Protocol) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 localAppCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: localAppCluster,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress("127.0.0.1", port)}},
			}}}},
		},
	}
	setProtocolOptions(c, proto)
	return c
}

// setProtocolOptions makes the cluster speak HTTP/2 upstream when the
// protocol needs it.
func setProtocolOptions(c *cluster.Cluster, proto discovery.Protocol) {
	if !proto.NeedsHTTP2() {
		return
	}
	opts := &httpopts.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}},
		}},
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpOptionsKey: mustAny(opts)}
}
