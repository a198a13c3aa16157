package translate

import (
	"net"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	"github.com/bowlinemesh/bowline/config"
)

// ServerListenerPrefix starts the name of the listener an xDS-enabled gRPC
// server asks for; the bootstrap's server_listener_resource_name_template is
// ServerListenerPrefix + "%s", and gRPC-Go puts the address it listens on
// ("10.0.0.1:50051", "[::]:50051") in place of %s.
const ServerListenerPrefix = "grpc/server?xds.resource.listening_address="

// ServerListenerTemplate is the server_listener_resource_name_template.
const ServerListenerTemplate = ServerListenerPrefix + "%s"

// serverListener answers the listener request of an xDS-enabled gRPC server
// of the proxy's service: its address, and one filter chain whose HTTP
// connection manager has an inline route configuration that lets every RPC
// through (gRPC servers require non_forwarding_action), with mutual TLS in
// strict mode. It reports false for any other name.
func (b *builder) serverListener(name string) (*listener.Listener, bool) {
	addr, ok := strings.CutPrefix(name, ServerListenerPrefix)
	if !ok {
		return nil, false
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, false
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, false
	}
	m := &hcm.HttpConnectionManager{
		StatPrefix: inboundListener,
		CodecType:  hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: inboundListener,
			VirtualHosts: []*route.VirtualHost{{
				Name:    inboundListener,
				Domains: []string{"*"},
				Routes: []*route.Route{{
					Name:   "default",
					Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
					Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}},
				}},
			}},
		}},
		HttpFilters: httpFilters(filterOptions{inbound: true}),
	}
	chain := &listener.FilterChain{
		Name: inboundListener,
		Filters: []*listener.Filter{{
			Name:       wellknown.HTTPConnectionManager,
			ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(m)},
		}},
	}
	// gRPC-Go picks a filter chain before any handshake and cannot tell TLS
	// from plaintext (gRFC A36), so permissive serves plaintext, through the
	// server credentials' fallback.
	if b.mode(b.p.Service) == config.MTLSStrict {
		provider := b.certProvider()
		if provider == "" {
			// The server's bootstrap has no certificate provider: it NACKs
			// this listener with a message naming the missing instance,
			// rather than serving plaintext.
			provider = DefaultCertProvider
		}
		chain.TransportSocket = transportSocket(grpcDownstreamTLS(provider))
	}
	return &listener.Listener{
		Name:             name,
		Address:          socketAddress(host, uint32(port)),
		TrafficDirection: core.TrafficDirection_INBOUND,
		FilterChains:     []*listener.FilterChain{chain},
	}, true
}
