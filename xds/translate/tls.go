package translate

import (
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// Mutual TLS is applied once, at the end of Build (secure), to what the other
// builders made, so that they need not know about it:
//
//   - the inbound listener of a sidecar requires a client certificate from
//     the mesh's trust bundle (strict), or tells TLS from plaintext with the
//     TLS inspector and accepts both (permissive);
//   - every EDS cluster of a service called over mTLS presents the workload
//     certificate and verifies that the upstream's certificate carries one
//     of the service's SPIFFE IDs;
//   - the listener of an xDS-enabled gRPC server (grpcserver.go) requires a
//     client certificate in strict mode.
//
// Envoy sidecars get their certificate and the bundle as SDS secrets on the
// ADS stream (secrets.go). Proxyless gRPC cannot use SDS: its TLS contexts
// name a certificate provider instance of its bootstrap (file_watcher on the
// files `bowline bootstrap grpc --cert-dir` writes).
//
// A proxy without identity material never gets a TLS context it could not
// fill: it speaks plaintext, which strict destinations refuse. A sidecar in
// strict mode without a certificate gets no inbound listener at all.

// ProxyTLS is a proxy's workload identity material.
type ProxyTLS struct {
	// SPIFFEID is the identity the proxy proved.
	SPIFFEID string
	// CertChain and PrivateKey (PEM) are an Envoy sidecar's certificate,
	// served to it as the SDS secret SecretCert.
	CertChain  []byte
	PrivateKey []byte
	// CertProvider is, for proxyless gRPC, the certificate provider instance
	// of its bootstrap that holds its certificate and the trust bundle
	// (DefaultCertProvider when written by bowline bootstrap grpc).
	CertProvider string
}

// DefaultCertProvider is the certificate provider instance that
// `bowline bootstrap grpc --cert-dir` writes.
const DefaultCertProvider = "default"

// Certificate names inside a gRPC certificate provider instance (the
// file_watcher plugin ignores them; they document intent).
const (
	providerCertName  = "default"
	providerRootsName = "ROOTCA"
)

// sidecarIdentity reports whether an Envoy sidecar can do mTLS: it has a
// certificate and the translation has a bundle to verify peers with.
func (b *builder) sidecarIdentity() bool {
	t := b.p.TLS
	if b.p.Kind != KindSidecar || t == nil || len(b.in.TrustBundle) == 0 {
		return false
	}
	if b.p.Part == PartOutbound {
		// The shared outbound part only needs to know that the sidecar has
		// an identity: its clusters name the secrets, which the inbound
		// part carries.
		return t.SPIFFEID != ""
	}
	return len(t.CertChain) > 0 && len(t.PrivateKey) > 0
}

// certProvider returns the gRPC certificate provider instance of the proxy,
// or "" when it has none.
func (b *builder) certProvider() string {
	if b.p.Kind != KindGRPC || b.p.TLS == nil {
		return ""
	}
	return b.p.TLS.CertProvider
}

// mode is the mTLS mode of a service.
func (b *builder) mode(k discovery.ServiceKey) config.MTLSMode {
	return b.in.Config.MTLSModeFor(k.Namespace, k.Name)
}

// trustDomain is the mesh's trust domain.
func (b *builder) trustDomain() string {
	if b.in.Config != nil && b.in.Config.Mesh.TrustDomain != "" {
		return b.in.Config.Mesh.TrustDomain
	}
	return config.DefaultTrustDomain
}

// secure applies mutual TLS to the listeners and clusters built, and adds the
// SDS secrets they refer to.
func (b *builder) secure() {
	sidecar := b.sidecarIdentity()
	if b.p.Kind == KindSidecar {
		b.secureInbound(sidecar)
	}
	provider := b.certProvider()
	if !sidecar && provider == "" {
		return
	}
	usesSecrets := false
	for i, r := range b.res.Clusters {
		c := r.(*cluster.Cluster)
		ref, ok := b.clusters[c.GetName()]
		if !ok || c.GetType() != cluster.Cluster_EDS {
			continue
		}
		svc := b.services[ref.service]
		if svc == nil || !b.upstreamTLS(svc) {
			continue
		}
		ids := b.upstreamIDs(svc)
		c = proto.Clone(c).(*cluster.Cluster) // clusters may be shared (Memo)
		b.res.Clusters[i] = c
		if sidecar {
			c.TransportSocket = transportSocket(sidecarUpstreamTLS(ids, svc.Protocol))
			usesSecrets = true
		} else {
			c.TransportSocket = transportSocket(grpcUpstreamTLS(provider, ids))
		}
	}
	switch {
	case !sidecar || b.p.Part == PartOutbound:
	case b.p.Part == PartInbound || usesSecrets || b.inboundUsesTLS():
		// The inbound part always carries the secrets: the outbound part,
		// built apart, may refer to them.
		b.res.Secrets = append(b.res.Secrets, b.secrets()...)
	}
}

// secureInbound sets the sidecar's inbound listener up for its service's
// mode.
func (b *builder) secureInbound(hasIdentity bool) {
	i := slices.IndexFunc(b.res.Listeners, func(r types.Resource) bool { return resourceName(r) == inboundListener })
	if i < 0 {
		return
	}
	l := proto.Clone(b.res.Listeners[i]).(*listener.Listener)
	b.res.Listeners[i] = l
	protocol := b.lookup(b.p.Service).Protocol
	switch b.mode(b.p.Service) {
	case config.MTLSStrict:
		if !hasIdentity {
			// Without a certificate the sidecar cannot verify its callers:
			// it accepts nothing rather than plaintext.
			b.res.Listeners = slices.Delete(b.res.Listeners, i, i+1)
			b.res.Clusters = slices.DeleteFunc(b.res.Clusters, func(r types.Resource) bool { return resourceName(r) == localAppCluster })
			return
		}
		for _, fc := range l.GetFilterChains() {
			fc.TransportSocket = transportSocket(sidecarDownstreamTLS(protocol))
		}
	case config.MTLSPermissive:
		if !hasIdentity {
			return
		}
		var chains []*listener.FilterChain
		for _, fc := range l.GetFilterChains() {
			mtls := proto.Clone(fc).(*listener.FilterChain)
			mtls.Name = inboundListener + "-mtls"
			mtls.FilterChainMatch = &listener.FilterChainMatch{TransportProtocol: "tls"}
			mtls.TransportSocket = transportSocket(sidecarDownstreamTLS(protocol))
			plain := fc
			plain.Name = inboundListener + "-plaintext"
			plain.FilterChainMatch = &listener.FilterChainMatch{TransportProtocol: "raw_buffer"}
			chains = append(chains, mtls, plain)
		}
		l.FilterChains = chains
		l.ListenerFilters = []*listener.ListenerFilter{{
			Name:       wellknown.TlsInspector,
			ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspector.TlsInspector{})},
		}}
		// A plaintext client of a server-first protocol sends nothing to
		// inspect: it goes to the plaintext chain when the inspector times out.
		l.ContinueOnListenerFiltersTimeout = true
	}
}

// inboundUsesTLS reports whether the inbound listener refers to SDS secrets.
func (b *builder) inboundUsesTLS() bool {
	for _, r := range b.res.Listeners {
		if resourceName(r) != inboundListener {
			continue
		}
		for _, fc := range r.(*listener.Listener).GetFilterChains() {
			if fc.GetTransportSocket() != nil {
				return true
			}
		}
	}
	return false
}

// upstreamTLS decides whether calls to a service use mTLS: always in strict
// mode; in permissive mode when every endpoint has a sidecar (Envoy tells TLS
// from plaintext; a proxyless gRPC server serves plaintext in that mode).
func (b *builder) upstreamTLS(svc *discovery.Service) bool {
	switch b.mode(svc.ServiceKey) {
	case config.MTLSStrict:
		return true
	case config.MTLSPermissive:
		return len(svc.Endpoints) > 0 && !slices.ContainsFunc(svc.Endpoints, func(e discovery.Endpoint) bool { return e.SidecarPort == 0 })
	}
	return false
}

// upstreamIDs are the SPIFFE IDs a service's certificates may carry: those
// of its endpoints, or the service's own when the registry names none.
func (b *builder) upstreamIDs(svc *discovery.Service) []string {
	var ids []string
	for _, e := range svc.Endpoints {
		if e.Identity != "" {
			ids = append(ids, e.Identity)
		}
	}
	if len(ids) == 0 {
		ids = append(ids, discovery.ServiceIdentity(b.trustDomain(), svc.Namespace, svc.Name))
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

func transportSocket(m proto.Message) *core.TransportSocket {
	return &core.TransportSocket{
		Name:       wellknown.TransportSocketTls,
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(m)},
	}
}

func sds(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsSource()}
}

// sidecarDownstreamTLS is the inbound mTLS of an Envoy sidecar: its
// certificate and the bundle over SDS, a client certificate required.
func sidecarDownstreamTLS(proto discovery.Protocol) *tlsv3.DownstreamTlsContext {
	common := &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds(SecretCert)},
		ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: sds(SecretRoots)},
	}
	if proto.IsHTTP() {
		common.AlpnProtocols = []string{"h2", "http/1.1"}
	}
	return &tlsv3.DownstreamTlsContext{CommonTlsContext: common, RequireClientCertificate: wrapperspb.Bool(true)}
}

// sidecarUpstreamTLS is an Envoy cluster's mTLS: the workload certificate,
// the bundle, and the upstream's SPIFFE IDs as URI SANs.
func sidecarUpstreamTLS(ids []string, proto discovery.Protocol) *tlsv3.UpstreamTlsContext {
	var sans []*tlsv3.SubjectAltNameMatcher
	for _, id := range ids {
		sans = append(sans, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: id}},
		})
	}
	common := &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds(SecretCert)},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
			ValidationContextSdsSecretConfig: sds(SecretRoots),
		}},
	}
	if proto.NeedsHTTP2() {
		// gRPC servers require ALPN h2.
		common.AlpnProtocols = []string{"h2"}
	}
	return &tlsv3.UpstreamTlsContext{CommonTlsContext: common}
}

func providerInstance(provider, cert string) *tlsv3.CertificateProviderPluginInstance {
	return &tlsv3.CertificateProviderPluginInstance{InstanceName: provider, CertificateName: cert}
}

// grpcUpstreamTLS is a proxyless gRPC client's mTLS: certificate and roots
// from its certificate provider, and the upstream's SPIFFE IDs (gRPC-Go reads
// match_subject_alt_names, matched against every SAN of the peer).
func grpcUpstreamTLS(provider string, ids []string) *tlsv3.UpstreamTlsContext {
	var sans []*matcher.StringMatcher
	for _, id := range ids {
		sans = append(sans, &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: id}})
	}
	return &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: providerInstance(provider, providerCertName),
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: providerInstance(provider, providerRootsName),
			MatchSubjectAltNames:          sans,
		}},
	}}
}

// grpcDownstreamTLS is an xDS-enabled gRPC server's mTLS: its certificate and
// the roots from its certificate provider, a client certificate required
// (gRPC-Go supports no SAN matching on the server side).
func grpcDownstreamTLS(provider string) *tlsv3.DownstreamTlsContext {
	return &tlsv3.DownstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: providerInstance(provider, providerCertName),
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: providerInstance(provider, providerRootsName),
			}},
		},
		RequireClientCertificate: wrapperspb.Bool(true),
	}
}
