package translate

import (
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bowlinemesh/bowline/discovery"
)

// buildRouteConfig is the route configuration for calls to a service: one
// virtual host matching any authority (the listener already chose the
// service), whose routes the traffic rules refine.
func buildRouteConfig(svc *discovery.Service) *route.RouteConfiguration {
	name := RouteName(svc.ServiceKey)
	return &route.RouteConfiguration{
		Name: name,
		VirtualHosts: []*route.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes:  []*route.Route{clusterRoute(ClusterName(svc.ServiceKey), svc.Protocol)},
		}},
	}
}

// clusterRoute sends every request to one cluster. gRPC streams may live
// long, so gRPC routes have no overall timeout unless the rules set one.
func clusterRoute(cluster string, proto discovery.Protocol) *route.Route {
	action := &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: cluster}}
	if proto == discovery.ProtocolGRPC {
		action.Timeout = durationpb.New(0)
	}
	return &route.Route{
		Name:   "default",
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: action},
	}
}
