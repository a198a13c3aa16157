package translate_test

import (
	"bytes"
	"encoding/base64"
	"os"
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// Test identity material (testdata/tls/README).
var (
	testBundle = mustRead("testdata/tls/roots.pem")
	testCert   = mustRead("testdata/tls/cert.pem")
	testKey    = mustRead("testdata/tls/key.pem")
)

func mustRead(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return b
}

// tls is the identity material a golden case's proxy.json asks for.
func (s proxySpec) tls() *translate.ProxyTLS {
	switch {
	case s.Identity:
		return &translate.ProxyTLS{SPIFFEID: "spiffe://bowline.local/ns/default/svc/web", CertChain: testCert, PrivateKey: testKey}
	case s.CertProvider != "":
		return &translate.ProxyTLS{CertProvider: s.CertProvider}
	}
	return nil
}

// transportTLS unpacks a transport socket's TLS context, failing on anything
// gRPC-Go or Envoy would not recognise as one.
func transportTLS(t *testing.T, from string, ts *core.TransportSocket) (*tlsv3.UpstreamTlsContext, *tlsv3.DownstreamTlsContext) {
	t.Helper()
	if ts == nil {
		return nil, nil
	}
	if ts.GetName() != "envoy.transport_sockets.tls" {
		t.Errorf("%s: transport socket named %q; gRPC-Go requires envoy.transport_sockets.tls", from, ts.GetName())
	}
	up, down := &tlsv3.UpstreamTlsContext{}, &tlsv3.DownstreamTlsContext{}
	switch a := ts.GetTypedConfig(); {
	case a.MessageIs(up):
		if err := a.UnmarshalTo(up); err != nil {
			t.Fatal(err)
		}
		return up, nil
	case a.MessageIs(down):
		if err := a.UnmarshalTo(down); err != nil {
			t.Fatal(err)
		}
		return nil, down
	}
	t.Errorf("%s: transport socket holds %s", from, ts.GetTypedConfig().GetTypeUrl())
	return nil, nil
}

// checkGRPCCommonTLS applies gRPC-Go's rules for a CommonTlsContext
// (securityConfigFromCommonTLSContext in xdsresource/unmarshal_cds.go): only
// certificate provider instances, no tls_params, no SDS, no inline
// certificates, no SAN matching on the server side.
func checkGRPCCommonTLS(t *testing.T, from string, c *tlsv3.CommonTlsContext, server bool) {
	t.Helper()
	if c == nil {
		t.Errorf("%s: no common_tls_context", from)
		return
	}
	if c.GetTlsParams() != nil || c.GetCustomHandshaker() != nil {
		t.Errorf("%s: gRPC-Go NACKs tls_params and custom_handshaker", from)
	}
	if len(c.GetTlsCertificates()) > 0 || len(c.GetTlsCertificateSdsSecretConfigs()) > 0 {
		t.Errorf("%s: gRPC-Go NACKs tls_certificates and SDS", from)
	}
	if c.GetTlsCertificateProviderInstance().GetInstanceName() == "" {
		t.Errorf("%s: no identity certificate provider instance", from)
	}
	vc := c.GetValidationContext()
	if vc == nil {
		t.Errorf("%s: no validation_context", from)
		return
	}
	if vc.GetCaCertificateProviderInstance().GetInstanceName() == "" {
		t.Errorf("%s: gRPC-Go requires ca_certificate_provider_instance", from)
	}
	if server && len(vc.GetMatchSubjectAltNames()) > 0 {
		t.Errorf("%s: gRPC-Go NACKs match_subject_alt_names on the server side", from)
	}
	if len(vc.GetMatchTypedSubjectAltNames()) > 0 {
		t.Errorf("%s: gRPC-Go ignores match_typed_subject_alt_names: SAN checks would be lost", from)
	}
}

// checkGRPCServerListener applies gRPC-Go's server-side LDS rules
// (processServerSideListener and filterChainFromProto, unmarshal_lds.go).
func checkGRPCServerListener(t *testing.T, l *listener.Listener) {
	t.Helper()
	from := "listener " + l.GetName()
	if len(l.GetListenerFilters()) > 0 || l.GetUseOriginalDst().GetValue() {
		t.Errorf("%s: gRPC-Go NACKs listener_filters and use_original_dst", from)
	}
	if l.GetAddress().GetSocketAddress() == nil {
		t.Errorf("%s: gRPC-Go requires a socket address", from)
	}
	if len(l.GetFilterChains()) == 0 && l.GetDefaultFilterChain() == nil {
		t.Errorf("%s: no filter chain", from)
	}
	for _, fc := range l.GetFilterChains() {
		if tp := fc.GetFilterChainMatch().GetTransportProtocol(); tp != "" && tp != "raw_buffer" {
			t.Errorf("%s: gRPC-Go drops filter chains matching transport protocol %q", from, tp)
		}
		for _, f := range fc.GetFilters() {
			m := &hcm.HttpConnectionManager{}
			if err := f.GetTypedConfig().UnmarshalTo(m); err != nil {
				t.Errorf("%s: gRPC-Go supports only the HTTP connection manager: %v", from, err)
				continue
			}
			rc := m.GetRouteConfig()
			if rc == nil && m.GetRds() == nil {
				t.Errorf("%s: no route specifier", from)
			}
			for _, vh := range rc.GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					if r.GetNonForwardingAction() == nil {
						t.Errorf("%s: gRPC servers fail RPCs on routes without non_forwarding_action", from)
					}
				}
			}
		}
		_, down := transportTLS(t, from, fc.GetTransportSocket())
		if fc.GetTransportSocket() == nil {
			continue
		}
		if down == nil {
			t.Errorf("%s: a server filter chain needs a DownstreamTlsContext", from)
			continue
		}
		if down.GetRequireSni().GetValue() || down.GetOcspStaplePolicy() != tlsv3.DownstreamTlsContext_LENIENT_STAPLING {
			t.Errorf("%s: gRPC-Go NACKs require_sni and OCSP stapling", from)
		}
		checkGRPCCommonTLS(t, from, down.GetCommonTlsContext(), true)
	}
}

// checkTLSCompat applies, to every TLS context of a proxy, the rules of the
// client that receives it: gRPC-Go's for proxyless gRPC, and for Envoy that
// everything comes over SDS (Envoy has no gRPC certificate providers).
func checkTLSCompat(t *testing.T, res *translate.Resources, kind translate.Kind) {
	t.Helper()
	var commons []*tlsv3.CommonTlsContext
	for _, r := range res.Clusters {
		c := r.(*cluster.Cluster)
		if len(c.GetTransportSocketMatches()) > 0 {
			t.Errorf("cluster %q: gRPC-Go NACKs transport_socket_matches", c.GetName())
		}
		up, down := transportTLS(t, "cluster "+c.GetName(), c.GetTransportSocket())
		if down != nil {
			t.Errorf("cluster %q: a DownstreamTlsContext on a cluster", c.GetName())
		}
		if up == nil {
			continue
		}
		if kind == translate.KindGRPC {
			checkGRPCCommonTLS(t, "cluster "+c.GetName(), up.GetCommonTlsContext(), false)
			if len(up.GetCommonTlsContext().GetValidationContext().GetMatchSubjectAltNames()) == 0 {
				t.Errorf("cluster %q: the upstream's SPIFFE ID is not verified", c.GetName())
			}
		} else if len(up.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()) == 0 {
			t.Errorf("cluster %q: the upstream's SPIFFE ID is not verified", c.GetName())
		}
		commons = append(commons, up.GetCommonTlsContext())
	}
	if kind != translate.KindSidecar {
		return
	}
	for _, r := range res.Listeners {
		l := r.(*listener.Listener)
		for _, fc := range l.GetFilterChains() {
			_, down := transportTLS(t, "listener "+l.GetName(), fc.GetTransportSocket())
			if down == nil {
				continue
			}
			if !down.GetRequireClientCertificate().GetValue() {
				t.Errorf("listener %q: mTLS without a required client certificate", l.GetName())
			}
			commons = append(commons, down.GetCommonTlsContext())
		}
	}
	for _, c := range commons {
		if c.GetTlsCertificateProviderInstance() != nil || c.GetValidationContext().GetCaCertificateProviderInstance() != nil {
			t.Error("an Envoy TLS context names a gRPC certificate provider")
		}
	}
}

func TestMTLSGoldenCompat(t *testing.T) {
	for _, dir := range caseDirs(t) {
		c := loadCase(t, dir)
		t.Run(c.name, func(t *testing.T) {
			res, err := translate.Build(c.input(nil), c.proxy)
			if err != nil {
				t.Fatal(err)
			}
			checkTLSCompat(t, res, c.proxy.Kind)
		})
	}
}

// buildTLS builds for a proxy in a mesh declared in HCL.
func buildTLS(t *testing.T, hcl string, p translate.Proxy) *translate.Resources {
	t.Helper()
	cfg := parseMesh(t, hcl)
	c := goldenCase{cfg: cfg, proxy: p}
	res, err := translate.Build(c.input(nil), p)
	if err != nil {
		t.Fatal(err)
	}
	if err := translate.Check(res); err != nil {
		t.Fatalf("Check: %v", err)
	}
	checkTLSCompat(t, res, p.Kind)
	return res
}

func parseMesh(t *testing.T, src string) *config.Config {
	t.Helper()
	cfg, diags := config.Parse([]config.File{{Name: "mesh.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	return cfg
}

const tlsMesh = `
service "web" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
  upstream "api" {
    local_port = 9001
  }
  upstream "greeter" {
    local_port = 9002
  }
}
service "api" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.2"
    port         = 8080
    sidecar_port = 21000
  }
}
service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.0.3"
    port    = 50051
  }
}
`

var webSidecar = translate.Proxy{Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: "default", Name: "web"}}

func withIdentity(p translate.Proxy) translate.Proxy {
	p.TLS = &translate.ProxyTLS{CertChain: testCert, PrivateKey: testKey}
	return p
}

func tlsClusters(res *translate.Resources) []string {
	var out []string
	for _, r := range res.Clusters {
		if r.(*cluster.Cluster).GetTransportSocket() != nil {
			out = append(out, translate.ResourceName(r))
		}
	}
	return out
}

func findRes[T types.Resource](list []types.Resource, name string) (T, bool) {
	for _, r := range list {
		if translate.ResourceName(r) == name {
			return r.(T), true
		}
	}
	var zero T
	return zero, false
}

func TestMTLSSidecarModes(t *testing.T) {
	tests := []struct {
		name        string
		identity    string
		proxy       translate.Proxy
		inbound     bool     // the inbound listener exists
		chains      []string // its filter chains with TLS marked "+tls"
		inspector   bool
		tlsClusters []string
		secrets     []string
	}{
		{"strict", `identity { mtls = "strict" }`, withIdentity(webSidecar), true,
			[]string{"+tls"}, false, []string{"default/api", "default/greeter"}, []string{"ROOTCA", "default"}},
		{"permissive", ``, withIdentity(webSidecar), true,
			[]string{"inbound-mtls+tls", "inbound-plaintext"}, true, []string{"default/api"}, []string{"ROOTCA", "default"}},
		{"disabled", `identity { mtls = "disabled" }`, withIdentity(webSidecar), true,
			[]string{""}, false, nil, nil},
		{"per-service override", "identity {\n mtls = \"disabled\"\n service \"greeter\" {\n mtls = \"strict\"\n }\n}", withIdentity(webSidecar), true,
			[]string{""}, false, []string{"default/greeter"}, []string{"ROOTCA", "default"}},
		{"strict without identity", `identity { mtls = "strict" }`, webSidecar, false,
			nil, false, nil, nil},
		{"permissive without identity", ``, webSidecar, true,
			[]string{""}, false, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := buildTLS(t, tlsMesh+tt.identity, tt.proxy)
			l, ok := findRes[*listener.Listener](res.Listeners, "inbound")
			if ok != tt.inbound {
				t.Fatalf("inbound listener present = %t, want %t", ok, tt.inbound)
			}
			if _, ok := findRes[*cluster.Cluster](res.Clusters, "local_app"); ok != tt.inbound {
				t.Errorf("local_app present = %t, want %t", ok, tt.inbound)
			}
			var chains []string
			for _, fc := range l.GetFilterChains() {
				s := fc.GetName()
				if fc.GetTransportSocket() != nil {
					s += "+tls"
				}
				chains = append(chains, s)
			}
			if !slices.Equal(chains, tt.chains) {
				t.Errorf("inbound chains = %q, want %q", chains, tt.chains)
			}
			if got := len(l.GetListenerFilters()) == 1; got != tt.inspector {
				t.Errorf("tls_inspector present = %t, want %t", got, tt.inspector)
			}
			if got := tlsClusters(res); !slices.Equal(got, tt.tlsClusters) {
				t.Errorf("clusters with mTLS = %q, want %q", got, tt.tlsClusters)
			}
			var secrets []string
			for _, s := range res.Secrets {
				secrets = append(secrets, translate.ResourceName(s))
			}
			if !slices.Equal(secrets, tt.secrets) {
				t.Errorf("secrets = %q, want %q", secrets, tt.secrets)
			}
		})
	}
}

// The sidecar receives its own certificate and the bundle, nothing else.
func TestMTLSSidecarSecretsAreItsOwn(t *testing.T) {
	res := buildTLS(t, tlsMesh+`identity { mtls = "strict" }`, withIdentity(webSidecar))
	cert, _ := findRes[*tlsv3.Secret](res.Secrets, translate.SecretCert)
	if !bytes.Equal(cert.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), testCert) ||
		!bytes.Equal(cert.GetTlsCertificate().GetPrivateKey().GetInlineBytes(), testKey) {
		t.Error("the certificate secret is not the proxy's own")
	}
	roots, _ := findRes[*tlsv3.Secret](res.Secrets, translate.SecretRoots)
	if !bytes.Equal(roots.GetValidationContext().GetTrustedCa().GetInlineBytes(), testBundle) {
		t.Error("the roots secret is not the trust bundle")
	}
}

func TestMTLSUpstreamSPIFFEIDs(t *testing.T) {
	svc := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "shop", Name: "cart"}, Protocol: discovery.ProtocolGRPC, Endpoints: []discovery.Endpoint{
		{Address: "10.0.0.1", Port: 1, Identity: "spiffe://bowline.local/ns/shop/sa/cart-v2"},
		{Address: "10.0.0.2", Port: 1, Identity: "spiffe://bowline.local/ns/shop/sa/cart"},
		{Address: "10.0.0.3", Port: 1, Identity: "spiffe://bowline.local/ns/shop/sa/cart"},
	}}
	bare := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "shop", Name: "bare"}, Protocol: discovery.ProtocolGRPC,
		Endpoints: []discovery.Endpoint{{Address: "10.0.0.4", Port: 1}}}
	cfg := parseMesh(t, "mesh {\n trust_domain = \"corp.example\"\n}\nidentity {\n mtls = \"strict\"\n}\n")
	in := translate.Input{Catalog: discovery.NewSnapshot(nil, []*discovery.Service{svc, bare}), Config: cfg, TrustBundle: testBundle}
	res, err := translate.Build(in, translate.Proxy{Kind: translate.KindGRPC, Service: discovery.ServiceKey{Namespace: "shop", Name: "ui"},
		Listeners: []string{"cart", "bare"}, TLS: &translate.ProxyTLS{CertProvider: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"shop/cart": {"spiffe://bowline.local/ns/shop/sa/cart", "spiffe://bowline.local/ns/shop/sa/cart-v2"},
		"shop/bare": {"spiffe://corp.example/ns/shop/svc/bare"},
	}
	for name, ids := range want {
		c, _ := findRes[*cluster.Cluster](res.Clusters, name)
		up, _ := transportTLS(t, name, c.GetTransportSocket())
		var got []string
		for _, m := range up.GetCommonTlsContext().GetValidationContext().GetMatchSubjectAltNames() {
			got = append(got, m.GetExact())
		}
		if !slices.Equal(got, ids) {
			t.Errorf("%s: SANs = %q, want %q", name, got, ids)
		}
	}
}

func TestMTLSGRPCServerListener(t *testing.T) {
	const mesh = `
service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.0.3"
    port    = 50051
  }
}
`
	greeter := discovery.ServiceKey{Namespace: "default", Name: "greeter"}
	tests := []struct {
		name     string
		identity string
		listen   string
		provider string
		addr     string
		port     uint32
		tls      string // the provider instance of the TLS context, "" for plaintext
	}{
		{"strict", `identity { mtls = "strict" }`, "0.0.0.0:50051", "default", "0.0.0.0", 50051, "default"},
		{"strict, IPv6", `identity { mtls = "strict" }`, "[::]:50051", "mine", "::", 50051, "mine"},
		{"strict without provider: NACKed with a clear message", `identity { mtls = "strict" }`, "10.0.0.3:50051", "", "10.0.0.3", 50051, "default"},
		{"permissive serves plaintext", ``, "10.0.0.3:50051", "default", "10.0.0.3", 50051, ""},
		{"disabled", `identity { mtls = "disabled" }`, "10.0.0.3:50051", "default", "10.0.0.3", 50051, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := translate.Proxy{Kind: translate.KindGRPC, Service: greeter, Listeners: []string{translate.ServerListenerPrefix + tt.listen}}
			if tt.provider != "" {
				p.TLS = &translate.ProxyTLS{CertProvider: tt.provider}
			}
			res := buildTLS(t, mesh+tt.identity, p)
			if len(res.Listeners) != 1 {
				t.Fatalf("want one listener, got %d", len(res.Listeners))
			}
			l := res.Listeners[0].(*listener.Listener)
			checkGRPCServerListener(t, l)
			sa := l.GetAddress().GetSocketAddress()
			if l.GetName() != p.Listeners[0] || sa.GetAddress() != tt.addr || sa.GetPortValue() != tt.port {
				t.Errorf("listener %q on %s:%d", l.GetName(), sa.GetAddress(), sa.GetPortValue())
			}
			_, down := transportTLS(t, l.GetName(), l.GetFilterChains()[0].GetTransportSocket())
			if got := down.GetCommonTlsContext().GetTlsCertificateProviderInstance().GetInstanceName(); got != tt.tls {
				t.Errorf("TLS provider = %q, want %q", got, tt.tls)
			}
			if tt.tls != "" && !down.GetRequireClientCertificate().GetValue() {
				t.Error("strict mode must require a client certificate")
			}
		})
	}
	for _, bad := range []string{translate.ServerListenerPrefix + "nohostport", translate.ServerListenerPrefix + "1.2.3.4:99999", "grpc/other"} {
		res := buildTLS(t, mesh, translate.Proxy{Kind: translate.KindGRPC, Service: greeter, Listeners: []string{bad}})
		if len(res.Listeners) != 0 {
			t.Errorf("listener name %q answered", bad)
		}
	}
}

func TestMTLSCheckFindsMissingSecrets(t *testing.T) {
	res := buildTLS(t, tlsMesh+`identity { mtls = "strict" }`, withIdentity(webSidecar))
	res.Secrets = res.Secrets[:1]
	err := translate.Check(res)
	if err == nil || !strings.Contains(err.Error(), `SDS secret "default", which does not exist`) {
		t.Fatalf("Check = %v, want a missing SDS secret", err)
	}
}

func TestMTLSConfigDumpRedactsKeys(t *testing.T) {
	res := buildTLS(t, tlsMesh+`identity { mtls = "strict" }`, withIdentity(webSidecar))
	out, err := translate.JSON(res)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("PRIVATE KEY")) || bytes.Contains(out, []byte(b64(testKey))) || !bytes.Contains(out, []byte("[redacted]")) {
		t.Error("the config dump shows the private key")
	}
	cert, _ := findRes[*tlsv3.Secret](res.Secrets, translate.SecretCert)
	if !bytes.Equal(cert.GetTlsCertificate().GetPrivateKey().GetInlineBytes(), testKey) {
		t.Error("Redact modified the served secret")
	}
}

// Clusters shared through a Memo are never modified: a proxy with an
// identity and one without, built in turn, each get their own.
func TestMTLSLeavesMemoAlone(t *testing.T) {
	cfg := parseMesh(t, tlsMesh+`identity { mtls = "strict" }`)
	c := goldenCase{cfg: cfg}
	memo := translate.NewMemo()
	in := c.input(nil)
	in.Memo = memo
	for range 2 {
		with, err := translate.Build(in, withIdentity(webSidecar))
		if err != nil {
			t.Fatal(err)
		}
		without, err := translate.Build(in, webSidecar)
		if err != nil {
			t.Fatal(err)
		}
		if len(tlsClusters(with)) != 2 || len(tlsClusters(without)) != 0 {
			t.Fatalf("with identity: %q; without: %q", tlsClusters(with), tlsClusters(without))
		}
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
