package translate_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/bowlinemesh/bowline/xds/translate"
)

// The checks in this file go beyond translate.Check: they encode rules that
// real clients apply and protoc-gen-validate does not, so that a golden file
// cannot silently accept a configuration a client would NACK.
//
// gRPC-Go's rules are those of google.golang.org/grpc
// internal/xds/xdsclient/xdsresource/unmarshal_{lds,rds,cds,eds}.go (v1.85.0);
// Envoy's are from its documented behaviour. The shape of EDS resources and
// of a cluster's EDS config source does not depend on the proxy's kind, so
// the gRPC-Go rules for them apply to sidecar cases too. A cluster's
// lb_policy does: a sidecar is sent Envoy's RANDOM and MAGLEV, a proxyless
// client round robin and ring hash instead (clusters.go; each kind gets its
// own translation), so that rule is checked for gRPC clients only
// (checkGRPCClusters).

// checkEDSCompat applies gRPC-Go's EDS rules (and the EDS config source rule
// of its CDS parser) and Envoy's EDS address rule to every cluster and load
// assignment.
func checkEDSCompat(t *testing.T, res *translate.Resources) {
	t.Helper()
	for _, r := range res.Clusters {
		c := r.(*cluster.Cluster)
		if c.GetType() != cluster.Cluster_EDS {
			continue
		}
		if src := c.GetEdsClusterConfig().GetEdsConfig(); src.GetAds() == nil && src.GetSelf() == nil {
			t.Errorf("cluster %q: gRPC-Go requires the EDS config source to be ADS or self", c.GetName())
		}
	}
	for _, r := range res.Endpoints {
		for _, err := range edsProblems(r.(*endpoint.ClusterLoadAssignment)) {
			t.Error(err)
		}
	}
}

// checkGRPCClusters applies gRPC-Go's CDS lb_policy rule to the clusters
// sent to a proxyless gRPC client.
func checkGRPCClusters(t *testing.T, res *translate.Resources) {
	t.Helper()
	for _, r := range res.Clusters {
		c := r.(*cluster.Cluster)
		switch c.GetLbPolicy() {
		case cluster.Cluster_ROUND_ROBIN, cluster.Cluster_RING_HASH, cluster.Cluster_LEAST_REQUEST:
		default:
			t.Errorf("cluster %q: gRPC-Go does not support lb_policy %v", c.GetName(), c.GetLbPolicy())
		}
	}
}

// edsProblems lists what gRPC-Go (parseEDSRespProto) or Envoy would reject in
// a load assignment.
func edsProblems(cla *endpoint.ClusterLoadAssignment) []error {
	var errs []error
	name := cla.GetClusterName()
	priorities := map[uint32]map[string]bool{}
	addrs := map[string]bool{}
	for _, lle := range cla.GetEndpoints() {
		l := lle.GetLocality()
		if l == nil {
			errs = append(errs, fmt.Errorf("endpoints %q: gRPC-Go NACKs a locality without ID (locality unset)", name))
			continue
		}
		if lle.GetLoadBalancingWeight().GetValue() == 0 {
			errs = append(errs, fmt.Errorf("endpoints %q: gRPC-Go ignores localities of weight 0", name))
		}
		lid := l.GetRegion() + "/" + l.GetZone() + "/" + l.GetSubZone()
		if priorities[lle.GetPriority()] == nil {
			priorities[lle.GetPriority()] = map[string]bool{}
		}
		if priorities[lle.GetPriority()][lid] {
			errs = append(errs, fmt.Errorf("endpoints %q: gRPC-Go NACKs duplicate locality %q in priority %d", name, lid, lle.GetPriority()))
		}
		priorities[lle.GetPriority()][lid] = true
		for _, e := range lle.GetLbEndpoints() {
			if w := e.GetLoadBalancingWeight(); w != nil && w.GetValue() == 0 {
				errs = append(errs, fmt.Errorf("endpoints %q: gRPC-Go NACKs an endpoint of weight 0", name))
			}
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			// Envoy resolves nothing in EDS: an address must be an IP literal
			// unless a resolver_name is set.
			if _, err := netip.ParseAddr(sa.GetAddress()); err != nil && sa.GetResolverName() == "" {
				errs = append(errs, fmt.Errorf("endpoints %q: Envoy rejects the non-IP EDS address %q", name, sa.GetAddress()))
			}
			a := fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
			if addrs[a] {
				errs = append(errs, fmt.Errorf("endpoints %q: gRPC-Go NACKs duplicate endpoint address %s", name, a))
			}
			addrs[a] = true
		}
	}
	for i := range uint32(len(priorities)) {
		if priorities[i] == nil {
			errs = append(errs, fmt.Errorf("endpoints %q: gRPC-Go NACKs priorities that are not contiguous from 0 (missing %d)", name, i))
		}
	}
	return errs
}

// checkGRPCListeners applies gRPC-Go's client-side LDS and RDS rules.
func checkGRPCListeners(t *testing.T, res *translate.Resources) {
	t.Helper()
	for _, r := range res.Listeners {
		l := r.(*listener.Listener)
		if strings.HasPrefix(l.GetName(), translate.ServerListenerPrefix) {
			checkGRPCServerListener(t, l) // tls_test.go
			continue
		}
		api := l.GetApiListener().GetApiListener()
		if api == nil {
			t.Errorf("listener %q: a proxyless gRPC client needs an api_listener", l.GetName())
			continue
		}
		m := &hcm.HttpConnectionManager{}
		if err := api.UnmarshalTo(m); err != nil {
			t.Errorf("listener %q: api_listener is not an HttpConnectionManager: %v", l.GetName(), err)
			continue
		}
		if m.GetXffNumTrustedHops() != 0 || len(m.GetOriginalIpDetectionExtensions()) > 0 {
			t.Errorf("listener %q: gRPC-Go NACKs xff_num_trusted_hops and original_ip_detection_extensions", l.GetName())
		}
		rds := m.GetRds()
		if rds == nil {
			t.Errorf("listener %q: expected routes over RDS", l.GetName())
		} else if src := rds.GetConfigSource(); (src.GetAds() == nil && src.GetSelf() == nil) || rds.GetRouteConfigName() == "" {
			t.Errorf("listener %q: gRPC-Go requires an RDS config source of ADS or self and a route config name", l.GetName())
		}
		seen := map[string]bool{}
		for _, f := range m.GetHttpFilters() {
			if seen[f.GetName()] {
				t.Errorf("listener %q: gRPC-Go NACKs duplicate HTTP filter %q", l.GetName(), f.GetName())
			}
			seen[f.GetName()] = true
		}
	}
	for _, r := range res.Routes {
		rc := r.(*route.RouteConfiguration)
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				if rt.GetMatch() == nil || rt.GetMatch().GetPathSpecifier() == nil {
					t.Errorf("route configuration %q: gRPC-Go NACKs a route without a path specifier", rc.GetName())
				}
			}
		}
	}
}

// checkSidecarListeners applies what Envoy enforces when it binds listeners:
// each has a socket address, and no two share an address and port.
func checkSidecarListeners(t *testing.T, res *translate.Resources) {
	t.Helper()
	bound := map[uint32]string{}
	for _, r := range res.Listeners {
		l := r.(*listener.Listener)
		sa := l.GetAddress().GetSocketAddress()
		if sa == nil {
			t.Errorf("listener %q: a sidecar listener needs a socket address", l.GetName())
			continue
		}
		if len(l.GetFilterChains()) == 0 {
			t.Errorf("listener %q: no filter chain", l.GetName())
		}
		// 0.0.0.0:p and 127.0.0.1:p conflict as well, so compare ports.
		if prev, dup := bound[sa.GetPortValue()]; dup {
			t.Errorf("listeners %q and %q both bind port %d", prev, l.GetName(), sa.GetPortValue())
		}
		bound[sa.GetPortValue()] = l.GetName()
	}
}
