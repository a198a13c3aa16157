package translate

import (
	"cmp"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/discovery"
)

// buildLoadAssignment returns the endpoints of a service's cluster, or of
// one subset's cluster: the endpoints whose labels match the subset's.
func (b *builder) buildLoadAssignment(name string, svc *discovery.Service, subset string) *endpoint.ClusterLoadAssignment {
	var near *discovery.Locality
	if d := b.defaults(svc.ServiceKey); d != nil && d.LocalityFailover && b.p.Locality != (discovery.Locality{}) {
		near = &b.p.Locality
	}
	eps := svc.Endpoints
	if subset != "" {
		eps = nil
		if b.in.Config != nil {
			if s, ok := b.in.Config.Traffic.Subset(ref(svc.ServiceKey), subset); ok {
				for _, e := range svc.Endpoints {
					if hasLabels(e.Labels, s.Labels) {
						eps = append(eps, e)
					}
				}
			}
		}
	}
	return loadAssignment(name, eps, near)
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// buildLoadAssignment groups endpoints by locality. Unhealthy endpoints are
// left out. Degraded endpoints go to a lower priority than healthy ones, used
// only when the healthy ones cannot take the load (and to the same priority
// when no endpoint is healthy). With locality failover (near set), endpoints
// in the caller's zone come first, then its region, then the rest. Locality
// weights are the sum of their endpoints' weights, which proxyless gRPC
// requires to be non-zero. An endpoint with a sidecar is reached through its
// sidecar's inbound port.
func loadAssignment(name string, endpoints []discovery.Endpoint, near *discovery.Locality) *endpoint.ClusterLoadAssignment {
	anyHealthy := slices.ContainsFunc(endpoints, func(e discovery.Endpoint) bool { return e.Health == discovery.HealthHealthy })

	type group struct {
		loc  discovery.Locality
		rank int // before compaction into contiguous priorities
	}
	groups := map[group][]discovery.Endpoint{}
	for _, e := range endpoints {
		if e.Health == discovery.HealthUnhealthy {
			continue
		}
		g := group{loc: e.Locality}
		if near != nil {
			switch {
			case e.Region == near.Region && e.Zone == near.Zone:
			case e.Region == near.Region:
				g.rank = 2
			default:
				g.rank = 4
			}
		}
		if e.Health == discovery.HealthDegraded && anyHealthy {
			g.rank++
		}
		groups[g] = append(groups[g], e)
	}
	keys := make([]group, 0, len(groups))
	for g := range groups {
		keys = append(keys, g)
	}
	slices.SortFunc(keys, func(a, b group) int {
		return cmp.Or(cmp.Compare(a.rank, b.rank), cmp.Compare(a.loc.Region, b.loc.Region),
			cmp.Compare(a.loc.Zone, b.loc.Zone), cmp.Compare(a.loc.SubZone, b.loc.SubZone))
	})
	// Priorities must be contiguous from 0.
	priority := map[int]uint32{}
	for _, g := range keys {
		if _, ok := priority[g.rank]; !ok {
			priority[g.rank] = uint32(len(priority))
		}
	}
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{}}
	for _, g := range keys {
		eps := groups[g]
		var total uint32
		// Always set the locality, even empty: proxyless gRPC rejects a
		// LocalityLbEndpoints without one.
		lle := &endpoint.LocalityLbEndpoints{
			Priority: priority[g.rank],
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
