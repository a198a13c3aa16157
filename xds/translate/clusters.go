package translate

import (
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

const (
	defaultConnectTimeout = 5 * time.Second
	httpOptionsKey        = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// buildCluster is the EDS cluster of a service (or of one of its subsets),
// shaped by the service's defaults. TLS to the upstream (SDS) goes in its
// transport socket.
func (b *builder) buildCluster(name string, proto discovery.Protocol, d *config.ServiceDefaults) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
	setProtocolOptions(c, proto)
	if d == nil {
		return c
	}
	if d.ConnectTimeout > 0 {
		c.ConnectTimeout = durationpb.New(d.ConnectTimeout)
	}
	if lb := d.LoadBalancer; lb != nil {
		b.setLoadBalancer(c, lb)
	}
	if cb := d.CircuitBreaker; cb != nil {
		t := &cluster.CircuitBreakers_Thresholds{Priority: core.RoutingPriority_DEFAULT}
		if cb.MaxConnections != nil {
			t.MaxConnections = wrapperspb.UInt32(*cb.MaxConnections)
		}
		if cb.MaxPendingRequests != nil {
			t.MaxPendingRequests = wrapperspb.UInt32(*cb.MaxPendingRequests)
		}
		if cb.MaxRequests != nil {
			t.MaxRequests = wrapperspb.UInt32(*cb.MaxRequests)
		}
		if cb.MaxRetries != nil {
			t.MaxRetries = wrapperspb.UInt32(*cb.MaxRetries)
		}
		c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{t}}
	}
	if o := d.Outlier; o != nil {
		c.OutlierDetection = outlierDetection(o)
	}
	return c
}

// setLoadBalancer sets the policy. Proxyless gRPC knows round robin, least
// request and ring hash only: random falls back to round robin and maglev to
// ring hash for it (validation warns).
func (b *builder) setLoadBalancer(c *cluster.Cluster, lb *config.LoadBalancer) {
	grpc := b.p.Kind == KindGRPC
	switch lb.Policy {
	case "least_request":
		c.LbPolicy = cluster.Cluster_LEAST_REQUEST
		if lb.ChoiceCount != 0 {
			c.LbConfig = &cluster.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &cluster.Cluster_LeastRequestLbConfig{ChoiceCount: wrapperspb.UInt32(lb.ChoiceCount)}}
		}
	case "random":
		if !grpc {
			c.LbPolicy = cluster.Cluster_RANDOM
		}
	case "ring_hash", "maglev":
		if lb.Policy == "maglev" && !grpc {
			c.LbPolicy = cluster.Cluster_MAGLEV
			return
		}
		c.LbPolicy = cluster.Cluster_RING_HASH
		rh := &cluster.Cluster_RingHashLbConfig{HashFunction: cluster.Cluster_RingHashLbConfig_XX_HASH}
		if lb.MinRingSize != 0 {
			rh.MinimumRingSize = wrapperspb.UInt64(lb.MinRingSize)
		}
		if lb.MaxRingSize != 0 {
			rh.MaximumRingSize = wrapperspb.UInt64(lb.MaxRingSize)
		}
		c.LbConfig = &cluster.Cluster_RingHashLbConfig_{RingHashLbConfig: rh}
	}
}

// outlierDetection compiles both algorithms: consecutive errors (Envoy) and
// failure percentage (Envoy and proxyless gRPC). Success-rate ejection is
// turned off so that only what the user wrote ejects.
func outlierDetection(o *config.OutlierDetection) *cluster.OutlierDetection {
	od := &cluster.OutlierDetection{
		Interval:                   durationpb.New(o.Interval),
		BaseEjectionTime:           durationpb.New(o.BaseEjectionTime),
		EnforcingSuccessRate:       wrapperspb.UInt32(0),
		EnforcingConsecutive_5Xx:   wrapperspb.UInt32(0),
		EnforcingFailurePercentage: wrapperspb.UInt32(0),
	}
	if o.MaxEjectionPercent != nil {
		od.MaxEjectionPercent = wrapperspb.UInt32(*o.MaxEjectionPercent)
	}
	if o.Consecutive5xx != nil {
		od.Consecutive_5Xx = wrapperspb.UInt32(*o.Consecutive5xx)
		od.EnforcingConsecutive_5Xx = wrapperspb.UInt32(100)
	}
	if o.ConsecutiveGatewayErrors != nil {
		od.ConsecutiveGatewayFailure = wrapperspb.UInt32(*o.ConsecutiveGatewayErrors)
		od.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(100)
	}
	if o.FailurePercentage != nil {
		od.FailurePercentageThreshold = wrapperspb.UInt32(*o.FailurePercentage)
		od.EnforcingFailurePercentage = wrapperspb.UInt32(100)
		od.FailurePercentageMinimumHosts = wrapperspb.UInt32(2)
		minReq := o.MinRequests
		if minReq == 0 {
			minReq = 10
		}
		od.FailurePercentageRequestVolume = wrapperspb.UInt32(minReq)
	}
	return od
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

// percent converts a percentage into Envoy's fractional percent (per million,
// so that 0.5% is exact).
func percent(p float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: uint32(p*10000 + 0.5), Denominator: typev3.FractionalPercent_MILLION}
}
