package translate

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	trace "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	als "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	detectors "github.com/envoyproxy/go-control-plane/envoy/extensions/tracers/opentelemetry/resource_detectors/v3"
	tracingtag "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// Telemetry (docs/telemetry.md): every HTTP connection manager and TCP proxy
// of an Envoy sidecar, inbound and outbound, logs each request (connection)
// to bowline policyd's access log service (ALS v3, over the cluster that
// authorization uses, PolicydCluster), and, with a tracing block, traces a
// share of requests with Envoy's OpenTelemetry tracer.
//
// Nothing here depends on the proxy's own workload: policyd tells who
// reported from the node of the ALS stream (bootstrap metadata), and the log
// name tells the direction. So the outbound part stays shareable between
// sidecars of different services, and it carries the policyd and collector
// clusters that both parts use.
//
// Proxyless gRPC has no access log service: its requests are reported by
// the sidecars they reach, if any.

// The access log contract with policyd (docs/telemetry.md, "Access log
// contract"): the log names and the fields asked for besides Envoy's
// defaults.
const (
	// AccessLogInbound and AccessLogOutbound are the log names of the
	// inbound (reporter = destination) and outbound (reporter = source)
	// access logs; Envoy sends them in the stream identifier.
	AccessLogInbound  = "bowline_inbound"
	AccessLogOutbound = "bowline_outbound"
	// TagUpstreamPrincipal is the custom tag that carries the URI SAN of the
	// upstream's certificate (outbound mTLS), empty when there is none.
	TagUpstreamPrincipal = "upstream_peer_principal"
	// TracingCluster reaches the OTLP collector of the tracing block.
	TracingCluster = "opentelemetry_collector"
	// TCPGRPCAccessLog and OpenTelemetryTracer are Envoy's extension names.
	TCPGRPCAccessLog    = "envoy.access_loggers.tcp_grpc"
	OpenTelemetryTracer = "envoy.tracers.opentelemetry"
	environmentDetector = "envoy.tracers.opentelemetry.resource_detectors.environment"
)

// AccessLogRequestHeaders and AccessLogResponseHeaders are logged on every
// HTTP request besides the headers the telemetry block's dimensions name:
// content-type tells gRPC from HTTP, grpc-status is the gRPC status (a
// trailer, or a header of trailers-only responses).
var (
	AccessLogRequestHeaders   = []string{"content-type"}
	AccessLogResponseHeaders  = []string{"grpc-status"}
	AccessLogResponseTrailers = []string{"grpc-status"}
)

// Buffering of the access log: Envoy sends a batch when it holds this many
// bytes or after this long, whichever comes first.
const (
	accessLogBufferBytes   = 16 * 1024
	accessLogFlushInterval = time.Second
)

// telemetry is what one direction's connection managers and TCP proxies
// get; nil adds nothing.
type telemetry struct {
	http    []*accesslog.AccessLog
	tcp     []*accesslog.AccessLog
	tracing *hcm.HttpConnectionManager_Tracing
}

// sidecarTelemetry is built once per Build: [0] outbound, [1] inbound.
type sidecarTelemetry struct{ dir [2]*telemetry }

// telemetryFor returns the telemetry of a sidecar's inbound or outbound
// listeners (nil when there is none).
func (b *builder) telemetryFor(inbound bool) *telemetry {
	if b.tel == nil {
		b.tel = b.newSidecarTelemetry()
	}
	if inbound {
		return b.tel.dir[1]
	}
	return b.tel.dir[0]
}

// withTelemetry adds the telemetry of the options' direction.
func (b *builder) withTelemetry(o filterOptions) filterOptions {
	o.tel = b.telemetryFor(o.inbound)
	return o
}

// accessLogOn reports whether the sidecar's listeners log to policyd.
func (b *builder) accessLogOn() bool {
	cfg := b.in.Config
	return b.p.Kind == KindSidecar && cfg != nil && cfg.Mesh.Policyd != nil && cfg.TelemetrySettings().Enabled
}

func (b *builder) tracingDecl() *config.TracingDecl {
	if b.p.Kind != KindSidecar || b.in.Config == nil {
		return nil
	}
	return b.in.Config.TelemetrySettings().Tracing
}

func (b *builder) newSidecarTelemetry() *sidecarTelemetry {
	st := &sidecarTelemetry{}
	on, tr := b.accessLogOn(), b.tracingDecl()
	if !on && tr == nil {
		return st
	}
	var dims []*config.TelemetryDimension
	if b.in.Config != nil {
		dims = b.in.Config.TelemetrySettings().Dimensions
	}
	for i, inbound := range []bool{false, true} {
		t := &telemetry{}
		if on {
			t.http = []*accesslog.AccessLog{httpAccessLog(inbound, dims)}
			t.tcp = []*accesslog.AccessLog{tcpAccessLog(inbound)}
		}
		if tr != nil {
			svc := ""
			if inbound { // the inbound part is the workload's own
				svc = b.p.Service.Name + "." + b.namespace()
			}
			t.tracing = openTelemetryTracing(tr, svc)
		}
		st.dir[i] = t
	}
	return st
}

// applyHTTP sets the access log and the tracer of a connection manager.
func (t *telemetry) applyHTTP(m *hcm.HttpConnectionManager) {
	if t == nil {
		return
	}
	m.AccessLog = t.http
	m.Tracing = t.tracing
}

// applyTCP sets the access log of a TCP proxy. Envoy logs once when the
// upstream connection is established (counted as opened) and once when the
// connection ends (closed, with its bytes).
func (t *telemetry) applyTCP(p *tcpproxy.TcpProxy) {
	if t == nil || len(t.tcp) == 0 {
		return
	}
	p.AccessLog = t.tcp
	p.AccessLogOptions = &tcpproxy.TcpProxy_TcpAccessLogOptions{FlushAccessLogOnConnected: true}
}

func commonAccessLogConfig(inbound bool) *als.CommonGrpcAccessLogConfig {
	c := &als.CommonGrpcAccessLogConfig{
		LogName: AccessLogOutbound,
		GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: PolicydCluster},
		}},
		TransportApiVersion: core.ApiVersion_V3,
		BufferFlushInterval: durationpb.New(accessLogFlushInterval),
		BufferSizeBytes:     wrapperspb.UInt32(accessLogBufferBytes),
	}
	if inbound {
		c.LogName = AccessLogInbound
	} else {
		c.CustomTags = []*tracingtag.CustomTag{{Tag: TagUpstreamPrincipal, Type: &tracingtag.CustomTag_Value{Value: "%UPSTREAM_PEER_URI_SAN%"}}}
	}
	return c
}

func httpAccessLog(inbound bool, dims []*config.TelemetryDimension) *accesslog.AccessLog {
	reqHeaders := slices.Clone(AccessLogRequestHeaders)
	respHeaders := slices.Clone(AccessLogResponseHeaders)
	for _, d := range dims {
		if d.RequestHeader != "" {
			reqHeaders = append(reqHeaders, d.RequestHeader)
		}
		if d.ResponseHeader != "" {
			respHeaders = append(respHeaders, d.ResponseHeader)
		}
	}
	slices.Sort(reqHeaders)
	slices.Sort(respHeaders)
	return &accesslog.AccessLog{
		Name: wellknown.HTTPGRPCAccessLog,
		ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: mustAny(&als.HttpGrpcAccessLogConfig{
			CommonConfig:                    commonAccessLogConfig(inbound),
			AdditionalRequestHeadersToLog:   slices.Compact(reqHeaders),
			AdditionalResponseHeadersToLog:  slices.Compact(respHeaders),
			AdditionalResponseTrailersToLog: slices.Clone(AccessLogResponseTrailers),
		})},
	}
}

func tcpAccessLog(inbound bool) *accesslog.AccessLog {
	return &accesslog.AccessLog{
		Name: TCPGRPCAccessLog,
		ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: mustAny(&als.TcpGrpcAccessLogConfig{
			CommonConfig: commonAccessLogConfig(inbound),
		})},
	}
}

// openTelemetryTracing traces the configured share of requests. The span's
// service.name is the workload's on inbound listeners; on outbound ones
// (shared between workloads) it comes from OTEL_RESOURCE_ATTRIBUTES, which
// `bowline envoy` sets, through the environment resource detector.
func openTelemetryTracing(tr *config.TracingDecl, service string) *hcm.HttpConnectionManager_Tracing {
	return &hcm.HttpConnectionManager_Tracing{
		RandomSampling: &typev3.Percent{Value: tr.Sampling},
		Provider: &trace.Tracing_Http{
			Name: OpenTelemetryTracer,
			ConfigType: &trace.Tracing_Http_TypedConfig{TypedConfig: mustAny(&trace.OpenTelemetryConfig{
				GrpcService: &core.GrpcService{
					TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: TracingCluster}},
					Timeout:         durationpb.New(250 * time.Millisecond),
				},
				ServiceName: service,
				ResourceDetectors: []*core.TypedExtensionConfig{{
					Name:        environmentDetector,
					TypedConfig: mustAny(&detectors.EnvironmentResourceDetectorConfig{}),
				}},
			})},
		},
	}
}

// telemetryClusters adds the clusters that telemetry refers to. The
// outbound part (or the whole configuration) carries them, since every
// sidecar has one and both parts use them: the inbound part leaves out the
// policyd cluster, which authorization may have added to it.
func (b *builder) telemetryClusters() {
	on, tr := b.accessLogOn(), b.tracingDecl()
	if !on && tr == nil {
		return
	}
	have := slices.IndexFunc(b.res.Clusters, func(r types.Resource) bool { return resourceName(r) == PolicydCluster })
	if b.p.Part == PartInbound {
		if on && have >= 0 {
			b.res.Clusters = slices.Delete(b.res.Clusters, have, have+1)
		}
		return
	}
	if on && have < 0 {
		b.res.Clusters = append(b.res.Clusters, b.policydCluster(b.in.Config.Mesh.Policyd))
	}
	if tr != nil {
		b.res.Clusters = append(b.res.Clusters, hostPortCluster(TracingCluster, tr.OTLPAddress, discovery.ProtocolGRPC))
	}
}

// hostPortCluster reaches one host:port: STATIC for an IP address,
// STRICT_DNS for a name.
func hostPortCluster(name, hostPort string, proto discovery.Protocol) *cluster.Cluster {
	host, portStr, _ := net.SplitHostPort(hostPort) // validated by config
	port, _ := strconv.ParseUint(portStr, 10, 16)
	typ := cluster.Cluster_STATIC
	if _, err := netip.ParseAddr(host); err != nil {
		typ = cluster.Cluster_STRICT_DNS
	}
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: typ},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(strings.Trim(host, "[]"), uint32(port))}},
			}}}},
		},
	}
	setProtocolOptions(c, proto)
	return c
}

// checkTelemetry verifies that the clusters of every access log and tracer
// exist.
func checkTelemetry(r *Resources, clusters map[string]*cluster.Cluster) []error {
	var errs []error
	need := func(l *listener.Listener, what, name string) {
		if _, ok := clusters[name]; name != "" && !ok {
			errs = append(errs, fmt.Errorf("listener %q: %s refers to cluster %q, which does not exist", l.GetName(), what, name))
		}
	}
	logs := func(l *listener.Listener, list []*accesslog.AccessLog) {
		for _, al := range list {
			var common *als.CommonGrpcAccessLogConfig
			h, t := &als.HttpGrpcAccessLogConfig{}, &als.TcpGrpcAccessLogConfig{}
			switch a := al.GetTypedConfig(); {
			case a.MessageIs(h) && a.UnmarshalTo(h) == nil:
				common = h.GetCommonConfig()
			case a.MessageIs(t) && a.UnmarshalTo(t) == nil:
				common = t.GetCommonConfig()
			}
			need(l, "access log "+al.GetName(), common.GetGrpcService().GetEnvoyGrpc().GetClusterName())
		}
	}
	for _, res := range r.Listeners {
		l := res.(*listener.Listener)
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				m, p := &hcm.HttpConnectionManager{}, &tcpproxy.TcpProxy{}
				switch a := f.GetTypedConfig(); {
				case a.MessageIs(m) && a.UnmarshalTo(m) == nil:
					logs(l, m.GetAccessLog())
					otel := &trace.OpenTelemetryConfig{}
					if tc := m.GetTracing().GetProvider().GetTypedConfig(); tc.MessageIs(otel) && tc.UnmarshalTo(otel) == nil {
						need(l, "tracer", otel.GetGrpcService().GetEnvoyGrpc().GetClusterName())
					}
				case a.MessageIs(p) && a.UnmarshalTo(p) == nil:
					logs(l, p.GetAccessLog())
				}
			}
		}
	}
	return errs
}
