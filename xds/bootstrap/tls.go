package bootstrap

import (
	"fmt"
	"net"
	"path/filepath"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// xDS over TLS: with Options.XDSCA (the mesh's trust bundle, `bowline ca
// roots`), the proxy verifies bowline server's certificate as any TLS
// client does: the bundle as roots, the host of XDSAddr (a DNS name or an
// IP address) as the name the certificate must carry.

// xdsCAFile is the bundle a gRPC bootstrap verifies the server with: the
// certificate directory's ca.pem when there is one (kept current by
// `--watch`, so it follows a root rotation), else XDSCA.
func (o Options) xdsCAFile() (string, error) {
	f := o.XDSCA
	if o.CertDir != "" {
		f = filepath.Join(o.CertDir, CAFile)
	}
	abs, err := filepath.Abs(f)
	if err != nil {
		return "", fmt.Errorf("bootstrap: xDS CA file: %w", err)
	}
	return abs, nil
}

// grpcChannelCreds are the channel_creds of a gRPC bootstrap's xDS server:
// "tls" (gRFC A65: gRPC-Go re-reads the CA file every refresh interval)
// with an XDSCA, else "insecure".
func (o Options) grpcChannelCreds() ([]any, error) {
	if o.XDSCA == "" {
		return []any{map[string]any{"type": "insecure"}}, nil
	}
	ca, err := o.xdsCAFile()
	if err != nil {
		return nil, err
	}
	refresh := o.CertRefresh
	if refresh <= 0 {
		refresh = DefaultCertRefresh
	}
	return []any{map[string]any{"type": "tls", "config": map[string]any{
		"ca_certificate_file": ca,
		"refresh_interval":    durationJSON(refresh),
	}}}, nil
}

// xdsTransportSocket is the TLS transport socket of an Envoy bootstrap's
// bowline_xds cluster (nil without an XDSCA): the bundle file as trusted
// CA, the server's certificate matched on the host Envoy dials (Envoy
// checks no name unless told to), SNI for a DNS name, ALPN h2.
func (o Options) xdsTransportSocket(host string) (*core.TransportSocket, error) {
	if o.XDSCA == "" {
		return nil, nil
	}
	ca, err := filepath.Abs(o.XDSCA)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: xDS CA file: %w", err)
	}
	san := &tlsv3.SubjectAltNameMatcher{
		SanType: tlsv3.SubjectAltNameMatcher_DNS,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: host}},
	}
	sni := host
	if net.ParseIP(host) != nil {
		san.SanType, sni = tlsv3.SubjectAltNameMatcher_IP_ADDRESS, ""
	}
	ctx := &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols: []string{"h2"},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa:                 &core.DataSource{Specifier: &core.DataSource_Filename{Filename: ca}},
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san},
			}},
		},
	}
	a, err := anypb.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}
