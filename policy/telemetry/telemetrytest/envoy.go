// Package telemetrytest simulates the access logging of Envoy sidecars for
// tests: a Sidecar has the node that `bowline bootstrap envoy` writes and
// the access log configuration that bowline server generates for it
// (translate.Build), and streams entries to an access log service the way
// Envoy does (ALS v3, one stream per log, the identifier on the first
// message, batches), with exactly the fields that configuration asks Envoy
// for.
package telemetrytest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	als "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/bootstrap"
	"github.com/bowlinemesh/bowline/xds/server"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// Sidecar is one simulated Envoy sidecar.
type Sidecar struct {
	Node *core.Node
	// Address is the sidecar's IP address (downstream and upstream
	// addresses of its entries).
	Address string
	// Principal is its workload's SPIFFE ID when it has an identity ("":
	// plaintext).
	Principal string
	// The generated access log configurations: of the inbound listener,
	// and of each outbound listener by upstream cluster.
	inboundHTTP  *als.HttpGrpcAccessLogConfig
	inboundTCP   *als.TcpGrpcAccessLogConfig
	outboundHTTP map[string]*als.HttpGrpcAccessLogConfig
	outboundTCP  map[string]*als.TcpGrpcAccessLogConfig

	mu      sync.Mutex
	streams map[string]*stream
}

type stream struct {
	c    grpc.ClientStreamingClient[accesslogv3.StreamAccessLogsMessage, accesslogv3.StreamAccessLogsResponse]
	sent bool
}

// NewSidecar builds the sidecar of one service instance: its node from
// bootstrap.EnvoyProto(o), its configuration from translate.Build with the
// configuration and catalog given.
func NewSidecar(cfg *config.Config, catalog *discovery.Snapshot, o bootstrap.Options, address string) (*Sidecar, error) {
	b, err := bootstrap.EnvoyProto(o)
	if err != nil {
		return nil, err
	}
	p, err := server.ProxyFromNode(b.GetNode())
	if err != nil {
		return nil, err
	}
	res, err := translate.Build(translate.Input{Catalog: catalog, Config: cfg}, p)
	if err != nil {
		return nil, err
	}
	if err := translate.Check(res); err != nil {
		return nil, err
	}
	s := &Sidecar{Node: b.GetNode(), Address: address, outboundHTTP: map[string]*als.HttpGrpcAccessLogConfig{},
		outboundTCP: map[string]*als.TcpGrpcAccessLogConfig{}, streams: map[string]*stream{}}
	for _, r := range res.Listeners {
		l := r.(*listener.Listener)
		inbound := l.GetTrafficDirection() == core.TrafficDirection_INBOUND
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				m, tp := &hcm.HttpConnectionManager{}, &tcpproxy.TcpProxy{}
				switch a := f.GetTypedConfig(); {
				case a.MessageIs(m) && a.UnmarshalTo(m) == nil:
					for _, al := range m.GetAccessLog() {
						c := &als.HttpGrpcAccessLogConfig{}
						if al.GetTypedConfig().UnmarshalTo(c) != nil {
							continue
						}
						if inbound {
							s.inboundHTTP = c
						} else {
							s.outboundHTTP[upstreamOf(l.GetName())] = c
						}
					}
				case a.MessageIs(tp) && a.UnmarshalTo(tp) == nil:
					for _, al := range tp.GetAccessLog() {
						c := &als.TcpGrpcAccessLogConfig{}
						if al.GetTypedConfig().UnmarshalTo(c) != nil {
							continue
						}
						if inbound {
							s.inboundTCP = c
						} else {
							s.outboundTCP[tp.GetCluster()] = c
						}
					}
				}
			}
		}
	}
	return s, nil
}

// upstreamOf reads the cluster of an outbound listener's name
// ("outbound|<port>|<ns>/<name>").
func upstreamOf(listener string) string {
	parts := strings.SplitN(listener, "|", 3)
	if len(parts) < 3 {
		return ""
	}
	return parts[2]
}

// Logs reports whether the generated configuration asks for access logs.
func (s *Sidecar) Logs() bool {
	return s.inboundHTTP != nil || s.inboundTCP != nil || len(s.outboundHTTP)+len(s.outboundTCP) > 0
}

// Request is one request as the sidecar saw it.
type Request struct {
	// Inbound: the sidecar received it for its workload; otherwise its
	// workload sent it to Upstream ("namespace/name").
	Inbound  bool
	Upstream string
	// UpstreamAddress is the address:port of the upstream host (outbound).
	UpstreamAddress string
	UpstreamPort    uint32
	// PeerPrincipal is the caller's certificate URI SAN (inbound), or the
	// upstream's (outbound); "" for plaintext.
	PeerPrincipal string
	// CallerAddress is the downstream address (inbound).
	CallerAddress string
	Method, Path  string
	Headers       map[string]string // request headers
	RespHeaders   map[string]string
	Code          uint32
	GRPCStatus    string // "" for plain HTTP
	Duration      time.Duration
	ReqBytes      uint64
	RespBytes     uint64
	// RBAC: the inbound RBAC filter denied (rule ID, or "none" when no
	// allow rule matched) or its shadow rules would have.
	DeniedBy       string
	DryRunDeniedBy string
	// AllowedBy is the rule of the allow filter that let the request in.
	AllowedBy string
	// ExtAuthzDenied: policyd's ext_authz denied it.
	ExtAuthzDenied bool
	Flags          *alsdata.ResponseFlags
}

// HTTPEntry builds the entry Envoy would log for a request: its default
// fields and the headers the configuration asks for.
func (s *Sidecar) HTTPEntry(r Request, start time.Time) (*alsdata.HTTPAccessLogEntry, error) {
	cfg := s.inboundHTTP
	if !r.Inbound {
		cfg = s.outboundHTTP[r.Upstream]
	}
	if cfg == nil {
		return nil, fmt.Errorf("telemetrytest: no HTTP access log for %s", describe(r))
	}
	common := s.common(r, cfg.GetCommonConfig(), start)
	common.AccessLogType = alsdata.AccessLogType_DownstreamEnd
	reqHeaders := map[string]string{}
	ct := "application/json"
	if r.GRPCStatus != "" {
		ct = "application/grpc"
	}
	for _, h := range cfg.GetAdditionalRequestHeadersToLog() {
		switch {
		case h == "content-type":
			reqHeaders[h] = ct
		case r.Headers[h] != "":
			reqHeaders[h] = r.Headers[h]
		}
	}
	respHeaders, respTrailers := map[string]string{}, map[string]string{}
	for _, h := range cfg.GetAdditionalResponseHeadersToLog() {
		if v := r.RespHeaders[h]; v != "" {
			respHeaders[h] = v
		}
	}
	for _, h := range cfg.GetAdditionalResponseTrailersToLog() {
		if h == "grpc-status" && r.GRPCStatus != "" {
			respTrailers[h] = r.GRPCStatus
		}
	}
	method := core.RequestMethod(core.RequestMethod_value[cmpOr(r.Method, "GET")])
	details := "via_upstream"
	meta := map[string]any{}
	if r.Inbound {
		switch {
		case r.DeniedBy != "":
			details = "rbac_access_denied_matched_policy[" + r.DeniedBy + "]"
			if r.DeniedBy != "none" {
				meta["deny_enforced_engine_result"] = "denied"
				meta["deny_enforced_effective_policy_id"] = r.DeniedBy
			} else {
				meta["allow_enforced_engine_result"] = "denied"
			}
		case r.ExtAuthzDenied:
			details = "ext_authz_denied"
			common.ResponseFlags = &alsdata.ResponseFlags{UnauthorizedDetails: &alsdata.ResponseFlags_Unauthorized{Reason: alsdata.ResponseFlags_Unauthorized_EXTERNAL_SERVICE}}
		case r.AllowedBy != "":
			meta["allow_enforced_engine_result"] = "allowed"
			meta["allow_enforced_effective_policy_id"] = r.AllowedBy
		}
		if r.DryRunDeniedBy != "" {
			prefix := "deny_dry_run_"
			if r.DryRunDeniedBy == "none" {
				prefix = "allow_dry_run_"
			} else {
				meta[prefix+"shadow_effective_policy_id"] = r.DryRunDeniedBy
			}
			meta[prefix+"shadow_engine_result"] = "denied"
		}
	}
	if len(meta) > 0 {
		st, err := structpb.NewStruct(meta)
		if err != nil {
			return nil, err
		}
		common.Metadata = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.rbac": st}}
	}
	e := &alsdata.HTTPAccessLogEntry{
		CommonProperties: common,
		ProtocolVersion:  alsdata.HTTPAccessLogEntry_HTTP11,
		Request: &alsdata.HTTPRequestProperties{
			RequestMethod:       method,
			Scheme:              "http",
			Authority:           strings.ReplaceAll(r.Upstream, "/", "."),
			Path:                cmpOr(r.Path, "/"),
			UserAgent:           "telemetrytest",
			RequestId:           fmt.Sprintf("%x", start.UnixNano()),
			RequestHeadersBytes: 120,
			RequestBodyBytes:    r.ReqBytes,
			RequestHeaders:      reqHeaders,
		},
		Response: &alsdata.HTTPResponseProperties{
			ResponseCode:         wrapperspb.UInt32(r.Code),
			ResponseHeadersBytes: 80,
			ResponseBodyBytes:    r.RespBytes,
			ResponseHeaders:      respHeaders,
			ResponseTrailers:     respTrailers,
			ResponseCodeDetails:  details,
		},
	}
	if r.GRPCStatus != "" {
		e.ProtocolVersion = alsdata.HTTPAccessLogEntry_HTTP2
	}
	if r.Code == 0 {
		e.Response.ResponseCode = nil
	}
	return e, nil
}

func describe(r Request) string {
	if r.Inbound {
		return "the inbound listener"
	}
	return "upstream " + r.Upstream
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (s *Sidecar) common(r Request, cfg *als.CommonGrpcAccessLogConfig, start time.Time) *alsdata.AccessLogCommon {
	c := &alsdata.AccessLogCommon{
		StartTime:                  timestamppb.New(start),
		Duration:                   durationpb.New(r.Duration),
		TimeToLastRxByte:           durationpb.New(r.Duration / 10),
		TimeToLastDownstreamTxByte: durationpb.New(r.Duration),
		ResponseFlags:              r.Flags,
		RouteName:                  "default",
	}
	if c.ResponseFlags == nil {
		c.ResponseFlags = &alsdata.ResponseFlags{}
	}
	if r.Inbound {
		c.DownstreamRemoteAddress = sock(cmpOr(r.CallerAddress, "10.255.0.1"), 40000)
		c.DownstreamLocalAddress = sock(s.Address, 21000)
		c.UpstreamCluster = "local_app"
		c.UpstreamRemoteAddress = sock("127.0.0.1", 8080)
		if r.PeerPrincipal != "" {
			c.TlsProperties = &alsdata.TLSProperties{
				TlsVersion:                 alsdata.TLSProperties_TLSv1_3,
				PeerCertificateProperties:  san(r.PeerPrincipal),
				LocalCertificateProperties: san(s.Principal),
			}
		}
	} else {
		c.DownstreamRemoteAddress = sock("127.0.0.1", 50000)
		c.DownstreamLocalAddress = sock("127.0.0.1", 9001)
		c.UpstreamCluster = r.Upstream
		if r.UpstreamAddress != "" {
			c.UpstreamRemoteAddress = sock(r.UpstreamAddress, r.UpstreamPort)
			c.UpstreamLocalAddress = sock(s.Address, 45000)
		}
		// The custom tags the configuration asks for (%UPSTREAM_PEER_URI_SAN%).
		for _, t := range cfg.GetCustomTags() {
			if v := t.GetValue(); v == "%UPSTREAM_PEER_URI_SAN%" {
				if c.CustomTags == nil {
					c.CustomTags = map[string]string{}
				}
				c.CustomTags[t.GetTag()] = r.PeerPrincipal
			}
		}
	}
	return c
}

func san(uri string) *alsdata.TLSProperties_CertificateProperties {
	if uri == "" {
		return nil
	}
	return &alsdata.TLSProperties_CertificateProperties{SubjectAltName: []*alsdata.TLSProperties_CertificateProperties_SubjectAltName{
		{San: &alsdata.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: uri}},
	}}
}

func sock(addr string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

// TCPEntries builds the two entries Envoy logs for one TCP connection with
// the generated configuration (flush_access_log_on_connected): one when the
// upstream connection is established, one when it ends.
func (s *Sidecar) TCPEntries(r Request, sent, received uint64, start time.Time) ([]*alsdata.TCPAccessLogEntry, error) {
	cfg := s.inboundTCP
	if !r.Inbound {
		cfg = s.outboundTCP[r.Upstream]
	}
	if cfg == nil {
		return nil, fmt.Errorf("telemetrytest: no TCP access log for %s", describe(r))
	}
	open := s.common(r, cfg.GetCommonConfig(), start)
	open.AccessLogType = alsdata.AccessLogType_TcpUpstreamConnected
	open.IntermediateLogEntry = true
	open.Duration = nil
	end := s.common(r, cfg.GetCommonConfig(), start)
	end.AccessLogType = alsdata.AccessLogType_TcpConnectionEnd
	return []*alsdata.TCPAccessLogEntry{
		{CommonProperties: open, ConnectionProperties: &alsdata.ConnectionProperties{}},
		{CommonProperties: end, ConnectionProperties: &alsdata.ConnectionProperties{SentBytes: sent, ReceivedBytes: received}},
	}, nil
}

// LogName is the log name of a direction's access log.
func (s *Sidecar) logName(inbound bool, tcp bool, upstream string) string {
	switch {
	case inbound && tcp:
		return s.inboundTCP.GetCommonConfig().GetLogName()
	case inbound:
		return s.inboundHTTP.GetCommonConfig().GetLogName()
	case tcp:
		return s.outboundTCP[upstream].GetCommonConfig().GetLogName()
	default:
		return s.outboundHTTP[upstream].GetCommonConfig().GetLogName()
	}
}

// SendHTTP streams HTTP entries on the log of their direction, opening the
// stream (identifier first) when it is not open yet, as Envoy does.
func (s *Sidecar) SendHTTP(ctx context.Context, conn grpc.ClientConnInterface, inbound bool, upstream string, entries []*alsdata.HTTPAccessLogEntry) error {
	return s.send(ctx, conn, s.logName(inbound, false, upstream), &accesslogv3.StreamAccessLogsMessage{
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}},
	})
}

// SendTCP streams TCP entries on the log of their direction.
func (s *Sidecar) SendTCP(ctx context.Context, conn grpc.ClientConnInterface, inbound bool, upstream string, entries []*alsdata.TCPAccessLogEntry) error {
	return s.send(ctx, conn, s.logName(inbound, true, upstream), &accesslogv3.StreamAccessLogsMessage{
		LogEntries: &accesslogv3.StreamAccessLogsMessage_TcpLogs{TcpLogs: &accesslogv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: entries}},
	})
}

func (s *Sidecar) send(ctx context.Context, conn grpc.ClientConnInterface, logName string, msg *accesslogv3.StreamAccessLogsMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[logName]
	if st == nil {
		c, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
		if err != nil {
			return err
		}
		st = &stream{c: c}
		s.streams[logName] = st
	}
	if !st.sent {
		msg.Identifier = &accesslogv3.StreamAccessLogsMessage_Identifier{Node: s.Node, LogName: logName}
		st.sent = true
	}
	if err := st.c.Send(msg); err != nil {
		delete(s.streams, logName) // Envoy reconnects on the next batch
		return err
	}
	return nil
}

// Close closes the sidecar's streams and waits for policyd to answer, so
// that everything sent has been ingested.
func (s *Sidecar) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first error
	for name, st := range s.streams {
		if _, err := st.c.CloseAndRecv(); err != nil && first == nil {
			first = fmt.Errorf("close %s: %w", name, err)
		}
		delete(s.streams, name)
	}
	return first
}
