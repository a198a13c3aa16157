package translate

import (
	"fmt"
	"slices"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	"github.com/bowlinemesh/bowline/discovery"
)

// sidecar builds the listeners of an Envoy sidecar.
func (b *builder) sidecar() error {
	svc, _ := b.in.Catalog.Service(b.p.Service)
	inbound, local := b.p.InboundPort, b.p.LocalPort
	if svc != nil && (inbound == 0 || local == 0) {
		if ep, ok := svc.SidecarEndpoint(); ok {
			inbound = cmp0(inbound, ep.SidecarPort)
			local = cmp0(local, ep.Port)
		}
	}
	proto := b.lookup(b.p.Service).Protocol
	if inbound != 0 && local != 0 && b.p.Part != PartOutbound {
		b.res.Listeners = append(b.res.Listeners, buildInboundListener(inbound, proto, b.telemetryFor(true)))
		b.res.Clusters = append(b.res.Clusters, buildLocalAppCluster(local, proto))
	}
	if b.p.Part == PartInbound {
		return nil
	}

	var upstreams []discovery.Upstream
	if svc != nil {
		upstreams = append(upstreams, svc.Upstreams...)
	}
	upstreams = append(upstreams, b.p.Upstreams...)
	if b.p.AllServices {
		for _, s := range b.in.Catalog.Services() {
			b.useCluster(s.ServiceKey, "")
		}
	}
	seenPort := map[uint32]discovery.Upstream{}
	for _, u := range upstreams {
		if prev, dup := seenPort[u.LocalPort]; dup {
			if prev != u {
				return fmt.Errorf("translate: upstreams %s and %s of %s both use local port %d", prev.Service, u.Service, b.p.Service, u.LocalPort)
			}
			continue
		}
		seenPort[u.LocalPort] = u
		us := b.use(u.Service)
		if us.Protocol.IsHTTP() {
			b.useRoutes(u.Service)
		} else {
			b.useCluster(u.Service, "")
		}
		b.res.Listeners = append(b.res.Listeners, buildOutboundListener(u, us.Protocol, b.withTelemetry(b.outboundFilters(u.Service))))
	}
	return nil
}

func cmp0(a, b uint32) uint32 {
	if a != 0 {
		return a
	}
	return b
}

// proxyless builds API listeners for the dial targets a gRPC client asked for
// (or for every service).
func (b *builder) proxyless() {
	names := slices.Clone(b.p.Listeners)
	if b.p.AllServices {
		for _, s := range b.in.Catalog.Services() {
			names = append(names, s.Name+"."+s.Namespace)
			// A bare name resolves in the proxy's namespace (targetService).
			if s.Namespace == b.namespace() {
				names = append(names, s.Name)
			}
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	for _, name := range names {
		if l, ok := b.serverListener(name); ok { // an xDS-enabled gRPC server (grpcserver.go)
			b.res.Listeners = append(b.res.Listeners, l)
			continue
		}
		k, ok := b.targetService(name)
		if !ok {
			continue
		}
		b.useRoutes(k)
		b.res.Listeners = append(b.res.Listeners, buildAPIListener(name, k, b.outboundFilters(k)))
	}
}

// targetService maps a dial target (the listener name) to a service:
// "name" is a service in the proxy's namespace (or "default"), and
// "name.namespace" a service in that namespace when it exists. Names may
// contain dots, so every split is tried, the shortest name first.
func (b *builder) targetService(target string) (discovery.ServiceKey, bool) {
	if target == "" || strings.ContainsAny(target, "/:") {
		return discovery.ServiceKey{}, false
	}
	for i, c := range target {
		if c != '.' || i == 0 || i == len(target)-1 {
			continue
		}
		k := discovery.ServiceKey{Namespace: target[i+1:], Name: target[:i]}
		if _, exists := b.in.Catalog.Service(k); exists {
			return k, true
		}
		// The answer changes when k appears: depend on it.
		b.deps[k] = true
	}
	return discovery.ServiceKey{Namespace: b.namespace(), Name: target}, true
}

// namespace is the proxy's namespace, "default" when it has none.
func (b *builder) namespace() string {
	if b.p.Service.Namespace == "" {
		return discovery.DefaultNamespace
	}
	return b.p.Service.Namespace
}

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

func socketAddress(addr string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address:       addr,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

// buildAPIListener is what proxyless gRPC asks for: an HTTP connection
// manager without a socket, whose routes come over RDS.
func buildAPIListener(name string, k discovery.ServiceKey, opts filterOptions) *listener.Listener {
	m := &hcm.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteName(k),
		}},
		HttpFilters: httpFilters(opts),
	}
	return &listener.Listener{
		Name:        name,
		ApiListener: &listener.ApiListener{ApiListener: mustAny(m)},
	}
}

// buildOutboundListener listens on the upstream's local port on loopback.
func buildOutboundListener(u discovery.Upstream, proto discovery.Protocol, opts filterOptions) *listener.Listener {
	name := OutboundListenerName(u)
	var filter *listener.Filter
	if proto.IsHTTP() {
		filter = httpConnectionManager(name, &hcm.HttpConnectionManager{
			RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
				ConfigSource:    adsSource(),
				RouteConfigName: RouteName(u.Service),
			}},
		}, proto, opts)
	} else {
		filter = tcpProxy(name, ClusterName(u.Service), opts.tel)
	}
	return &listener.Listener{
		Name:             name,
		Address:          socketAddress("127.0.0.1", u.LocalPort),
		TrafficDirection: core.TrafficDirection_OUTBOUND,
		FilterChains:     []*listener.FilterChain{{Filters: []*listener.Filter{filter}}},
	}
}

// buildInboundListener accepts mesh traffic on the sidecar port and forwards
// it to the local application. Its filter chain is where TLS (SDS) and the
// inbound policy filters (RBAC, ext_authz, rate limits) go.
func buildInboundListener(port uint32, proto discovery.Protocol, tel *telemetry) *listener.Listener {
	var filter *listener.Filter
	if proto.IsHTTP() {
		filter = httpConnectionManager(inboundListener, &hcm.HttpConnectionManager{
			RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
				Name: inboundListener,
				VirtualHosts: []*route.VirtualHost{{
					Name:    inboundListener,
					Domains: []string{"*"},
					Routes:  []*route.Route{clusterRoute(localAppCluster, proto)},
				}},
			}},
		}, proto, filterOptions{inbound: true, tel: tel})
	} else {
		filter = tcpProxy(inboundListener, localAppCluster, tel)
	}
	return &listener.Listener{
		Name:             inboundListener,
		Address:          socketAddress("0.0.0.0", port),
		TrafficDirection: core.TrafficDirection_INBOUND,
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{filter},
			// TransportSocket: the mesh TLS context (SDS) goes here.
		}},
	}
}

func httpConnectionManager(statPrefix string, m *hcm.HttpConnectionManager, proto discovery.Protocol, opts filterOptions) *listener.Filter {
	m.StatPrefix = statPrefix
	m.CodecType = hcm.HttpConnectionManager_AUTO
	m.HttpFilters = httpFilters(opts)
	if proto.NeedsHTTP2() {
		m.Http2ProtocolOptions = &core.Http2ProtocolOptions{}
	}
	opts.tel.applyHTTP(m) // access log to policyd, tracing (accesslog.go)
	return &listener.Filter{
		Name:       wellknown.HTTPConnectionManager,
		ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(m)},
	}
}

func tcpProxy(statPrefix, cluster string, tel *telemetry) *listener.Filter {
	p := &tcpproxy.TcpProxy{
		StatPrefix:       statPrefix,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: cluster},
	}
	tel.applyTCP(p) // access log to policyd (accesslog.go)
	return &listener.Filter{
		Name:       wellknown.TCPProxy,
		ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(p)},
	}
}
