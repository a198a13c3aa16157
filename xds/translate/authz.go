package translate

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extauthzhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	extauthznet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/policy"
)

// Authorization is applied once, after the listeners are built (authorize),
// to what a proxy receives requests on:
//
//   - an Envoy sidecar's inbound listener gets RBAC filters compiled from
//     the rules about its service (HTTP filters in place 3 of filters.go, or
//     network filters before tcp_proxy), and, when the service is enforced by
//     policyd, an ext_authz filter (place 4) whose checks carry the
//     destination as context extensions, with the cluster that reaches
//     policyd;
//   - the listeners of an xDS-enabled gRPC server get the RBAC filters that
//     gRPC-Go enforces (it has no ext_authz, so it always enforces itself).

// Names of what authorization adds.
const (
	// PolicydCluster is the cluster of bowline policyd's gRPC port.
	PolicydCluster = "policyd"
	// ExtAuthzDestination and ExtAuthzPort are the context extensions of a
	// sidecar's checks: the destination service ("namespace/name") and the
	// port its application serves on.
	ExtAuthzDestination = "destination"
	ExtAuthzPort        = "port"
	rbacFilterPrefix    = wellknown.HTTPRoleBasedAccessControl + "."
)

// authorize adds authorization to the listeners built.
func (b *builder) authorize() {
	if b.p.Part == PartOutbound || b.in.Config == nil {
		return
	}
	switch b.p.Kind {
	case KindSidecar:
		b.authorizeSidecar()
	case KindGRPC:
		b.authorizeGRPCServers()
	}
}

// destination resolves the rules about the proxy's service and records the
// services whose principals they use: their changes rebuild this proxy.
func (b *builder) destination() *policy.Destination {
	d := policy.ForService(b.in.Config, b.in.Catalog, b.p.Service)
	if d != nil {
		for _, k := range d.Sources {
			b.deps[k] = true
		}
	}
	return d
}

// inboundLocalPort is the port of the sidecar's application.
func (b *builder) inboundLocalPort() uint32 {
	local := b.p.LocalPort
	if local == 0 {
		if svc, ok := b.in.Catalog.Service(b.p.Service); ok {
			if ep, ok := svc.SidecarEndpoint(); ok {
				local = ep.Port
			}
		}
	}
	return local
}

func (b *builder) authorizeSidecar() {
	i := -1
	for j, r := range b.res.Listeners {
		if resourceName(r) == inboundListener {
			i = j
		}
	}
	if i < 0 {
		return
	}
	cfg := b.in.Config
	k := b.p.Service
	ref := config.ServiceRef{Namespace: k.Namespace, Name: k.Name}
	d := b.destination()
	enforce := cfg.EnforceFor(ref)
	pd := cfg.Mesh.Policyd
	proto := b.lookup(k).Protocol
	local := b.inboundLocalPort()
	rs := d.Ruleset(policy.TargetFor(proto, false), policy.MetaOf(cfg))

	var rbacs []policy.RBACConfig
	if enforce.InProxy() || pd == nil {
		rbacs = rs.RBAC(policy.RBACOptions{TrustDomain: policy.MetaOf(cfg).TrustDomain, LocalPort: local})
	}
	extAuthz := enforce.InPolicyd() && pd != nil
	var jwt *hcm.HttpFilter
	if jwts := cfg.JWTFor(ref); len(jwts) > 0 && proto.IsHTTP() {
		var clusters []*cluster.Cluster
		jwt, clusters = jwtFilter(jwts) // jwt.go
		for _, c := range clusters {
			b.res.Clusters = append(b.res.Clusters, c)
		}
	}
	if len(rbacs) == 0 && !extAuthz && jwt == nil {
		return
	}
	l := proto2Listener(b.res.Listeners[i])
	for _, fc := range l.GetFilterChains() {
		if proto.IsHTTP() {
			b.authorizeHCM(fc, jwt, rbacs, extAuthz, map[string]string{ExtAuthzDestination: k.String(), ExtAuthzPort: strconv.Itoa(int(local))})
		} else {
			b.authorizeTCP(fc, rbacs, extAuthz)
		}
	}
	b.res.Listeners[i] = l
	if extAuthz {
		b.res.Clusters = append(b.res.Clusters, b.policydCluster(pd))
	}
}

func proto2Listener(r any) *listener.Listener {
	return proto.Clone(r.(*listener.Listener)).(*listener.Listener)
}

// authorizeHCM adds the HTTP filters to each HTTP connection manager of a
// filter chain.
func (b *builder) authorizeHCM(fc *listener.FilterChain, jwt *hcm.HttpFilter, rbacs []policy.RBACConfig, extAuthz bool, ext map[string]string) {
	for _, f := range fc.GetFilters() {
		m := &hcm.HttpConnectionManager{}
		if f.GetTypedConfig() == nil || !f.GetTypedConfig().MessageIs(m) {
			continue
		}
		if err := f.GetTypedConfig().UnmarshalTo(m); err != nil {
			continue // built by this package: cannot happen
		}
		if jwt != nil {
			m.HttpFilters = placeHTTPFilters(m.HttpFilters, jwt)
		}
		m.HttpFilters = placeHTTPFilters(m.HttpFilters, rbacHTTPFilters(rbacs)...)
		if extAuthz {
			m.HttpFilters = placeHTTPFilters(m.HttpFilters, typedFilter(wellknown.HTTPExternalAuthorization, b.extAuthzHTTP()))
			for _, vh := range m.GetRouteConfig().GetVirtualHosts() {
				if vh.TypedPerFilterConfig == nil {
					vh.TypedPerFilterConfig = map[string]*anypb.Any{}
				}
				vh.TypedPerFilterConfig[wellknown.HTTPExternalAuthorization] = mustAny(&extauthzhttp.ExtAuthzPerRoute{
					Override: &extauthzhttp.ExtAuthzPerRoute_CheckSettings{CheckSettings: &extauthzhttp.CheckSettings{ContextExtensions: ext}},
				})
			}
		}
		f.ConfigType = &listener.Filter_TypedConfig{TypedConfig: mustAny(m)}
	}
}

// rbacHTTPFilters are the RBAC HTTP filters, named after what they hold
// (gRPC requires distinct names).
func rbacHTTPFilters(rbacs []policy.RBACConfig) []*hcm.HttpFilter {
	var out []*hcm.HttpFilter
	for _, r := range rbacs {
		cfg := &rbachttp.RBAC{Rules: r.Rules, RulesStatPrefix: r.Name + "_"}
		if r.Shadow != nil {
			cfg.ShadowRules, cfg.ShadowRulesStatPrefix = r.Shadow, r.Name+"_dry_run_"
		}
		out = append(out, typedFilter(rbacFilterPrefix+r.Name, cfg))
	}
	return out
}

// authorizeTCP puts network RBAC (and ext_authz) before tcp_proxy.
func (b *builder) authorizeTCP(fc *listener.FilterChain, rbacs []policy.RBACConfig, extAuthz bool) {
	var filters []*listener.Filter
	for _, r := range rbacs {
		cfg := &rbacnet.RBAC{Rules: r.Rules, StatPrefix: inboundListener + "_rbac_" + r.Name}
		if r.Shadow != nil {
			cfg.ShadowRules, cfg.ShadowRulesStatPrefix = r.Shadow, "dry_run_"
		}
		filters = append(filters, &listener.Filter{Name: wellknown.RoleBasedAccessControl + "." + r.Name,
			ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(cfg)}})
	}
	if extAuthz {
		filters = append(filters, &listener.Filter{Name: wellknown.ExternalAuthorization,
			ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&extauthznet.ExtAuthz{
				StatPrefix:          inboundListener + "_ext_authz",
				GrpcService:         b.policydService(),
				TransportApiVersion: core.ApiVersion_V3,
			})}})
	}
	at := len(fc.Filters)
	for j, f := range fc.Filters {
		if f.GetTypedConfig().MessageIs((*tcpproxy.TcpProxy)(nil)) {
			at = j
			break
		}
	}
	fc.Filters = append(fc.Filters[:at:at], append(filters, fc.Filters[at:]...)...)
}

func (b *builder) policydService() *core.GrpcService {
	return &core.GrpcService{
		TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: PolicydCluster}},
		Timeout:         durationpb.New(b.in.Config.Mesh.Policyd.Timeout),
	}
}

// extAuthzHTTP asks policyd about every request; a failed or timed-out check
// denies (403).
func (b *builder) extAuthzHTTP() *extauthzhttp.ExtAuthz {
	return &extauthzhttp.ExtAuthz{
		Services:            &extauthzhttp.ExtAuthz_GrpcService{GrpcService: b.policydService()},
		TransportApiVersion: core.ApiVersion_V3,
		FailureModeAllow:    false,
		StatusOnError:       &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
	}
}

// policydCluster reaches policyd's gRPC port: the configured address, or
// the endpoints of the configured service (from the catalog).
func (b *builder) policydCluster(pd *config.PolicydDecl) *cluster.Cluster {
	type hostPort struct {
		host string
		port uint32
	}
	var eps []hostPort
	if pd.Address != "" {
		host, port, err := net.SplitHostPort(pd.Address)
		if p, perr := strconv.ParseUint(port, 10, 16); err == nil && perr == nil {
			eps = append(eps, hostPort{host, uint32(p)})
		}
	} else if pd.Service != nil {
		k := discovery.ServiceKey{Namespace: pd.Service.Namespace, Name: pd.Service.Name}
		b.deps[k] = true
		if svc, ok := b.in.Catalog.Service(k); ok {
			for _, e := range svc.Endpoints {
				if e.Health != discovery.HealthUnhealthy {
					eps = append(eps, hostPort{e.Address, e.Port})
				}
			}
		}
	}
	typ := cluster.Cluster_STATIC
	var lbs []*endpoint.LbEndpoint
	for _, e := range eps {
		if _, err := netip.ParseAddr(e.host); err != nil {
			typ = cluster.Cluster_STRICT_DNS
		}
		lbs = append(lbs, &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{
			Endpoint: &endpoint.Endpoint{Address: socketAddress(strings.Trim(e.host, "[]"), e.port)}}})
	}
	c := &cluster.Cluster{
		Name:                 PolicydCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: typ},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: PolicydCluster,
			Endpoints:   []*endpoint.LocalityLbEndpoints{{LbEndpoints: lbs}},
		},
	}
	setProtocolOptions(c, discovery.ProtocolGRPC)
	return c
}

// authorizeGRPCServers adds RBAC to the listeners of an xDS-enabled gRPC
// server (grpcserver.go). Port rules are matched by gRPC itself
// (destination_port), as the server listens on the service's port.
func (b *builder) authorizeGRPCServers() {
	var rbacs []policy.RBACConfig
	resolved := false
	for i, r := range b.res.Listeners {
		if !strings.HasPrefix(resourceName(r), ServerListenerPrefix) {
			continue
		}
		if !resolved {
			m := policy.MetaOf(b.in.Config)
			rbacs = b.destination().Ruleset(policy.TargetGRPC, m).RBAC(policy.RBACOptions{TrustDomain: m.TrustDomain})
			resolved = true
		}
		if len(rbacs) == 0 {
			return
		}
		l := proto2Listener(r)
		for _, fc := range l.GetFilterChains() {
			b.authorizeHCM(fc, nil, rbacs, false, nil)
		}
		b.res.Listeners[i] = l
	}
}

// checkAuthz verifies that every ext_authz filter's cluster exists.
func checkAuthz(r *Resources, clusters map[string]*cluster.Cluster) []error {
	var errs []error
	for _, res := range r.Listeners {
		l := res.(*listener.Listener)
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var svc *core.GrpcService
				switch a := f.GetTypedConfig(); {
				case a.MessageIs((*extauthznet.ExtAuthz)(nil)):
					x := &extauthznet.ExtAuthz{}
					if a.UnmarshalTo(x) == nil {
						svc = x.GetGrpcService()
					}
				case a.MessageIs((*hcm.HttpConnectionManager)(nil)):
					m := &hcm.HttpConnectionManager{}
					if a.UnmarshalTo(m) != nil {
						continue
					}
					for _, hf := range m.GetHttpFilters() {
						x := &extauthzhttp.ExtAuthz{}
						if hf.GetTypedConfig().MessageIs(x) && hf.GetTypedConfig().UnmarshalTo(x) == nil {
							svc = x.GetGrpcService()
						}
					}
				}
				if name := svc.GetEnvoyGrpc().GetClusterName(); name != "" {
					if _, ok := clusters[name]; !ok {
						errs = append(errs, fmt.Errorf("listener %q: ext_authz refers to cluster %q, which does not exist", l.GetName(), name))
					}
				}
			}
		}
	}
	return errs
}
