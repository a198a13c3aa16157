package translate

import (
	"cmp"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/discovery"
)

// buildLoadAssignment groups a service's endpoints by locality. Unhealthy
// endpoints are left out. Degraded endpoints go to priority 1, used only when
// the healthy ones of priority 0 cannot take the load (and to priority 0 when
// no endpoint is healthy). An endpoint with a sidecar is reached through its
// sidecar's inbound port. Locality weights are the sum of their endpoints'
// weights, which proxyless gRPC requires to be non-zero.
func buildLoadAssignment(svc *discovery.Service) *endpoint.ClusterLoadAssignment {
	name := ClusterName(svc.ServiceKey)
	anyHealthy := slices.ContainsFunc(svc.Endpoints, func(e discovery.Endpoint) bool { return e.Health == discovery.HealthHealthy })

	type group struct {
		loc      discovery.Locality
		priority uint32
	}
	groups := map[group][]discovery.Endpoint{}
	for _, e := range svc.Endpoints {
		if e.Health == discovery.HealthUnhealthy {
			continue
		}
		g := group{loc: e.Locality}
		if e.Health == discovery.HealthDegraded && anyHealthy {
			g.priority = 1
		}
		groups[g] = append(groups[g], e)
	}
	keys := make([]group, 0, len(groups))
	for g := range groups {
		keys = append(keys, g)
	}
	slices.SortFunc(keys, func(a, b group) int {
		return cmp.Or(cmp.Compare(a.priority, b.priority), cmp.Compare(a.loc.Region, b.loc.Region),
			cmp.Compare(a.loc.Zone, b.loc.Zone), cmp.Compare(a.loc.SubZone, b.loc.SubZone))
	})
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{}}
	for _, g := range keys {
		eps := groups[g]
		var total uint32
		// Always set the locality, even empty: proxyless gRPC rejects a
		// LocalityLbEndpoints without one.
		lle := &endpoint.LocalityLbEndpoints{
			Priority: g.priority,
			Locality: &core.Locality{Region: g.loc.Region, Zone: g.loc.Zone, SubZone: g.loc.SubZone},
		}
		for _, e := range eps {
			w := max(e.Weight, 1)
			port := e.Port
			if e.SidecarPort != 0 {
				port = e.SidecarPort // mesh traffic enters through the destination's sidecar
			}
			total += w
			lle.LbEndpoints = append(lle.LbEndpoints, &endpoint.LbEndpoint{
				HostIdentifier:      &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(e.Address, port)}},
				HealthStatus:        core.HealthStatus_HEALTHY,
				LoadBalancingWeight: wrapperspb.UInt32(w),
			})
		}
		lle.LoadBalancingWeight = wrapperspb.UInt32(total)
		cla.Endpoints = append(cla.Endpoints, lle)
	}
	return cla
}
