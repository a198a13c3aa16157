package translate

import (
	"errors"
	"fmt"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
)

// SDS secret names. A sidecar receives exactly these two: the certificate
// and key of its own workload identity, and the trust bundle. (Istio uses the
// same names.)
const (
	SecretCert  = "default"
	SecretRoots = "ROOTCA"
)

// secrets are a sidecar's SDS secrets.
func (b *builder) secrets() []types.Resource {
	return []types.Resource{
		&tlsv3.Secret{Name: SecretCert, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineBytes(b.p.TLS.CertChain),
			PrivateKey:       inlineBytes(b.p.TLS.PrivateKey),
		}}},
		&tlsv3.Secret{Name: SecretRoots, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inlineBytes(b.in.TrustBundle),
		}}},
	}
}

func inlineBytes(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

// Redact returns the resource with any private key replaced by
// "[redacted]", the way Envoy's own config dump shows secrets. Other
// resources are returned as they are.
func Redact(r types.Resource) types.Resource {
	s, ok := r.(*tlsv3.Secret)
	if !ok || s.GetTlsCertificate().GetPrivateKey() == nil {
		return r
	}
	c := proto.Clone(s).(*tlsv3.Secret)
	c.GetTlsCertificate().PrivateKey = &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "[redacted]"}}
	return c
}

// checkSecrets verifies that every SDS secret a transport socket names is
// among the resources (Envoy would wait for it forever).
func checkSecrets(r *Resources) []error {
	have := names(r.Secrets)
	var errs []error
	need := func(from string, ts *core.TransportSocket) {
		if ts == nil {
			return
		}
		var common *tlsv3.CommonTlsContext
		up, down := &tlsv3.UpstreamTlsContext{}, &tlsv3.DownstreamTlsContext{}
		switch a := ts.GetTypedConfig(); {
		case a.MessageIs(up):
			if err := a.UnmarshalTo(up); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", from, err))
				return
			}
			common = up.GetCommonTlsContext()
		case a.MessageIs(down):
			if err := a.UnmarshalTo(down); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", from, err))
				return
			}
			common = down.GetCommonTlsContext()
		default:
			return
		}
		refs := common.GetTlsCertificateSdsSecretConfigs()
		refs = append(refs, common.GetValidationContextSdsSecretConfig(), common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig())
		for _, s := range refs {
			if s != nil && !have[s.GetName()] {
				errs = append(errs, fmt.Errorf("%s refers to SDS secret %q, which does not exist", from, s.GetName()))
			}
		}
	}
	for _, l := range r.Listeners {
		l := l.(*listener.Listener)
		for _, fc := range l.GetFilterChains() {
			need(fmt.Sprintf("listener %q", l.GetName()), fc.GetTransportSocket())
		}
	}
	for _, c := range r.Clusters {
		c := c.(*cluster.Cluster)
		need(fmt.Sprintf("cluster %q", c.GetName()), c.GetTransportSocket())
	}
	for _, s := range r.Secrets {
		if _, ok := s.(*tlsv3.Secret); !ok {
			errs = append(errs, errors.New("a secret is not an envoy.extensions.transport_sockets.tls.v3.Secret"))
		}
	}
	return errs
}
