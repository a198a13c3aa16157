package server

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/test/adsclient"
	"github.com/bowlinemesh/bowline/xds/translate"
)

const (
	testWebToken = "web-token-0123456789"
	testAPIToken = "api-token-0123456789"
)

// identityHarness is a server with a CA, a strict mesh and two sidecar
// services, web and api.
type identityHarness struct {
	srv  *Server
	auth *identity.Authority
	addr string
}

func newIdentityHarness(t *testing.T, ttl time.Duration) *identityHarness {
	t.Helper()
	return newIdentityHarnessWith(t, ttl, nil)
}

// newIdentityHarnessWith is newIdentityHarness with an attestor (nil: the
// join tokens of web and api).
func newIdentityHarnessWith(t *testing.T, ttl time.Duration, att identity.Attestor) *identityHarness {
	t.Helper()
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	td := spiffeid.RequireTrustDomainFromString(config.DefaultTrustDomain)
	ca, err := identity.New(ctx, identity.Options{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	if att == nil {
		att = identity.NewJoinTokens(td, func() []identity.JoinToken {
			return []identity.JoinToken{
				{Namespace: "default", Service: "web", SHA256: identity.HashToken(testWebToken)},
				{Namespace: "default", Service: "api", SHA256: identity.HashToken(testAPIToken)},
			}
		})
	}
	h := &identityHarness{auth: identity.NewAuthority(identity.AuthorityOptions{CA: ca, Attestor: att, TTL: func() time.Duration { return ttl }})}
	store := config.NewStore(log)
	store.Update(config.FileSet{Source: "test", Files: []config.File{{Name: "id.hcl", Content: []byte(`identity { mtls = "strict" }`)}}})
	catalog := discovery.NewCatalog(log, discovery.Options{Debounce: time.Millisecond})
	src := make(chanSource, 1)
	src <- []*discovery.Service{sidecarService("web", 21000), sidecarService("api", 21001)}
	h.srv = New(log, Options{Debounce: time.Millisecond, Check: true, Identity: h.auth})
	go func() { _ = catalog.Run(ctx, src) }()
	go func() { _ = h.srv.Run(ctx, catalog, store) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	h.srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	h.addr = lis.Addr().String()
	select {
	case <-h.srv.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("server not ready")
	}
	return h
}

func sidecarService(name string, sidecarPort uint32) *discovery.Service {
	return &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: name}, Protocol: discovery.ProtocolHTTP,
		Endpoints: []discovery.Endpoint{{Address: "127.0.0.1", Port: 8080, SidecarPort: sidecarPort}}}
}

func tokenNode(t *testing.T, id, service, token string) *core.Node {
	t.Helper()
	md := map[string]any{MetaKind: "envoy", MetaService: service}
	if token != "" {
		md[MetaToken] = token
	}
	s, err := structpb.NewStruct(md)
	if err != nil {
		t.Fatal(err)
	}
	return &core.Node{Id: id, Cluster: service, Metadata: s}
}

func (h *identityHarness) connect(t *testing.T, node *core.Node) {
	t.Helper()
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	c := adsclient.New(adsclient.Options{Node: node})
	done := make(chan struct{})
	go func() { _ = c.Run(ctx, conn); close(done) }()
	t.Cleanup(func() { cancel(); <-done; conn.Close() })
}

// secrets waits for the proxy's first configuration and returns its secrets.
func (h *identityHarness) secrets(t *testing.T, id string) map[string]*tlsv3.Secret {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if res, ok := h.srv.ProxyResources(id); ok {
			out := map[string]*tlsv3.Secret{}
			for _, r := range res.Secrets {
				out[translate.ResourceName(r)] = r.(*tlsv3.Secret)
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy %s got no configuration", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func certSerial(t *testing.T, s *tlsv3.Secret) (string, spiffeid.ID) {
	t.Helper()
	svid, err := x509svid.Parse(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), s.GetTlsCertificate().GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	return svid.Certificates[0].SerialNumber.Text(16), svid.ID
}

func TestIdentityAttestationGatesSecrets(t *testing.T) {
	h := newIdentityHarness(t, time.Hour)
	tests := []struct {
		name, service, token string
		want                 string // the SPIFFE ID of the certificate, "" for none
	}{
		{"proven", "web", testWebToken, "spiffe://bowline.local/ns/default/svc/web"},
		{"no token", "web", "", ""},
		{"wrong token", "web", "guess-0123456789", ""},
		{"another service's token", "web", testAPIToken, ""},
		{"the other service, proven", "api", testAPIToken, "spiffe://bowline.local/ns/default/svc/api"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.service + "-" + string(rune('a'+i))
			h.connect(t, tokenNode(t, id, tt.service, tt.token))
			secrets := h.secrets(t, id)
			if tt.want == "" {
				if len(secrets) != 0 {
					t.Fatalf("an unproven proxy got secrets %v", slices.Collect(mapKeys(secrets)))
				}
				// In strict mode it cannot verify callers: no inbound listener.
				res, _ := h.srv.ProxyResources(id)
				for _, l := range res.Listeners {
					if translate.ResourceName(l) == "inbound" {
						t.Fatal("an unproven sidecar got an inbound listener in strict mode")
					}
				}
				return
			}
			if len(secrets) != 2 || secrets[translate.SecretRoots] == nil {
				t.Fatalf("secrets = %v", slices.Collect(mapKeys(secrets)))
			}
			if _, got := certSerial(t, secrets[translate.SecretCert]); got.String() != tt.want {
				t.Fatalf("certificate for %s, want %s", got, tt.want)
			}
		})
	}

	// Two proxies of one identity share its certificate.
	h.connect(t, tokenNode(t, "web-x", "web", testWebToken))
	h.connect(t, tokenNode(t, "web-y", "web", testWebToken))
	a, _ := certSerial(t, h.secrets(t, "web-x")[translate.SecretCert])
	b, _ := certSerial(t, h.secrets(t, "web-y")[translate.SecretCert])
	if a != b {
		t.Errorf("two proxies of web got different certificates")
	}
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// With a 2s lifetime, the sidecar's certificate is replaced at half-life,
// and a change of the trust bundle reaches it.
func TestIdentityRenewalAndBundle(t *testing.T) {
	h := newIdentityHarness(t, 2*time.Second)
	h.connect(t, tokenNode(t, "web-1", "web", testWebToken))
	first, _ := certSerial(t, h.secrets(t, "web-1")[translate.SecretCert])
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s, _ := certSerial(t, h.secrets(t, "web-1")[translate.SecretCert]); s != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the certificate was not renewed")
		}
		time.Sleep(20 * time.Millisecond)
	}

	if _, err := h.auth.Rotate(t.Context(), identity.PhasePrepare, false); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		roots, err := identity.ParseCerts(h.secrets(t, "web-1")[translate.SecretRoots].GetValidationContext().GetTrustedCa().GetInlineBytes())
		if err != nil {
			t.Fatal(err)
		}
		if len(roots) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new bundle did not reach the sidecar")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestIdentityCertProviderFromNode(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{MetaKind: "grpc", MetaService: "a", MetaCertProvider: "default", MetaToken: "x"})
	p, err := ProxyFromNode(&core.Node{Id: "a", Metadata: md})
	if err != nil || p.TLS == nil || p.TLS.CertProvider != "default" {
		t.Fatalf("gRPC proxy TLS = %+v, %v", p.TLS, err)
	}
	md, _ = structpb.NewStruct(map[string]any{MetaKind: "envoy", MetaService: "a", MetaCertProvider: "default", MetaToken: "x"})
	if p, _ := ProxyFromNode(&core.Node{Id: "a", Metadata: md}); p.TLS != nil {
		t.Fatal("a sidecar's TLS comes from attestation, never from its metadata")
	}
}
