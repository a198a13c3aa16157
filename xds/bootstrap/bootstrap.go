// Package bootstrap writes the bootstrap files that point a proxy at bowline
// server: gRPC-Go's xDS bootstrap JSON for proxyless gRPC, and Envoy's
// bootstrap for sidecars. The node metadata it writes is what the server
// reads to know the proxy's kind, service and ports.
package bootstrap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/xds/server"
)

// Options describe one proxy.
type Options struct {
	Service     string
	Namespace   string
	XDSAddr     string
	NodeID      string
	Version     string
	Upstreams   string // "name:port,ns/name:port"
	AllServices bool
	// Envoy only.
	AdminPort   uint32
	InboundPort uint32
	LocalPort   uint32
	Delta       bool
	// Identity (identity.go): Token proves the workload's identity (Envoy
	// sends it in its node metadata); CertDir holds a gRPC workload's
	// cert.pem, key.pem and ca.pem, re-read every CertRefresh.
	Token       string
	CertDir     string
	CertRefresh time.Duration
	// XDSCA is the trust bundle to verify the xDS server with (xDS over
	// TLS, tls.go); empty means plaintext.
	XDSCA string
}

func (o Options) metadata(kind string) map[string]any {
	m := map[string]any{
		server.MetaKind:      kind,
		server.MetaService:   o.Service,
		server.MetaNamespace: o.Namespace,
	}
	if o.Version != "" {
		m[server.MetaVersion] = o.Version
	}
	if o.Upstreams != "" {
		m[server.MetaUpstreams] = o.Upstreams
	}
	if o.AllServices {
		m[server.MetaAllServices] = true
	}
	if o.InboundPort != 0 {
		m[server.MetaInboundPort] = strconv.Itoa(int(o.InboundPort))
	}
	if o.LocalPort != 0 {
		m[server.MetaLocalPort] = strconv.Itoa(int(o.LocalPort))
	}
	o.identityMetadata(kind, m)
	return m
}

func (o Options) check() error {
	if o.Service == "" {
		return fmt.Errorf("bootstrap: a service name is required")
	}
	if o.NodeID == "" {
		return fmt.Errorf("bootstrap: a node id is required")
	}
	if o.Upstreams != "" {
		if _, err := server.ParseUpstreams(o.Upstreams, o.Namespace); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
	}
	return nil
}

// GRPC returns a bootstrap for gRPC-Go's xDS resolver (GRPC_XDS_BOOTSTRAP or
// GRPC_XDS_BOOTSTRAP_CONFIG).
func GRPC(o Options) ([]byte, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	creds, err := o.grpcChannelCreds() // tls.go
	if err != nil {
		return nil, err
	}
	doc := map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      o.XDSAddr,
			"channel_creds":   creds,
			"server_features": []any{"xds_v3"},
		}},
		"node": map[string]any{
			"id":       o.NodeID,
			"cluster":  o.Service,
			"metadata": o.metadata("grpc"),
			"locality": map[string]any{},
		},
	}
	if err := o.addGRPCIdentity(doc); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return append(b, '\n'), nil
}

// XDSCluster is the name of the static cluster that reaches bowline server.
const XDSCluster = "bowline_xds"

// EnvoyProto returns the Envoy bootstrap as a message (validated).
func EnvoyProto(o Options) (*bootstrapv3.Bootstrap, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	host, portStr, err := net.SplitHostPort(o.XDSAddr)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: xds address %q: %w", o.XDSAddr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: xds address %q: bad port", o.XDSAddr)
	}
	meta, err := structpb.NewStruct(o.metadata("envoy"))
	if err != nil {
		return nil, fmt.Errorf("bootstrap: metadata: %w", err)
	}
	adminPort := o.AdminPort
	if adminPort == 0 {
		adminPort = 19000
	}
	apiType := core.ApiConfigSource_GRPC
	if o.Delta {
		apiType = core.ApiConfigSource_DELTA_GRPC
	}
	ads := &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
	h2, err := anypb.New(&httpopts.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	tlsSocket, err := o.xdsTransportSocket(host) // tls.go
	if err != nil {
		return nil, err
	}
	discoveryType := cluster.Cluster_STATIC
	if net.ParseIP(host) == nil {
		discoveryType = cluster.Cluster_STRICT_DNS
	}
	b := &bootstrapv3.Bootstrap{
		Node: &core.Node{Id: o.NodeID, Cluster: o.Service, Metadata: meta},
		Admin: &bootstrapv3.Admin{Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &core.SocketAddress_PortValue{PortValue: adminPort},
		}}}},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &core.ApiConfigSource{
				ApiType:             apiType,
				TransportApiVersion: core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
				}}},
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*cluster.Cluster{{
			Name:                          XDSCluster,
			ClusterDiscoveryType:          &cluster.Cluster_Type{Type: discoveryType},
			ConnectTimeout:                durationpb.New(5e9),
			TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
			TransportSocket:               tlsSocket,
			LoadAssignment: &endpoint.ClusterLoadAssignment{
				ClusterName: XDSCluster,
				Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
					HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{
						Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
							Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
						}},
					}}},
				}}}},
			},
		}}},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap: generated Envoy bootstrap is invalid: %w", err)
	}
	return b, nil
}

// Envoy returns the Envoy bootstrap as JSON.
func Envoy(o Options) ([]byte, error) {
	b, err := EnvoyProto(o)
	if err != nil {
		return nil, err
	}
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	// Re-indent through encoding/json: protojson's spacing is deliberately unstable.
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}
