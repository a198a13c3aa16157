package identity_test

import (
	"context"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/bowlinemesh/bowline/identity"
)

const webToken = "web-token-0123456789"

func newAuthority(t *testing.T, clk *clock, ttl time.Duration) (*identity.Authority, *prometheus.Registry) {
	t.Helper()
	ca := newCA(t, clk, nil)
	reg := prometheus.NewRegistry()
	att := identity.NewJoinTokens(td, func() []identity.JoinToken {
		return []identity.JoinToken{
			{Namespace: "default", Service: "web", SHA256: identity.HashToken(webToken)},
			{Namespace: "default", Service: "api", SHA256: identity.HashToken("api-token-0123456789")},
		}
	})
	return identity.NewAuthority(identity.AuthorityOptions{CA: ca, Attestor: att, TTL: func() time.Duration { return ttl }, Registerer: reg}), reg
}

func TestIdentityAuthorityRenewsAtHalfLife(t *testing.T) {
	clk := newClock()
	a, reg := newAuthority(t, clk, time.Hour)
	web := serviceID(t, "default", "web")
	first, err := a.Certificate(web)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := a.Certificate(web); again.Serial != first.Serial {
		t.Error("the certificate was reissued before its half-life")
	}
	clk.Add(29 * time.Minute)
	if again, _ := a.Certificate(web); again.Serial != first.Serial {
		t.Error("the certificate was reissued before its half-life")
	}
	clk.Add(time.Minute)
	second, _ := a.Certificate(web)
	if second.Serial == first.Serial {
		t.Fatal("the certificate was not reissued at half-life")
	}
	if !second.RenewAt().Equal(clk.Now().Add(30 * time.Minute)) {
		t.Errorf("RenewAt = %s", second.RenewAt())
	}
	// Another identity has its own certificate.
	api, _ := a.Certificate(serviceID(t, "default", "api"))
	if api.Serial == second.Serial || api.ID == second.ID {
		t.Error("two identities share a certificate")
	}
	// A new signing root reissues at once.
	if err := a.CA().Rotate(context.Background(), identity.PhasePrepare, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	if err := a.CA().Rotate(context.Background(), identity.PhaseActivate, time.Hour, true); err != nil {
		t.Fatal(err)
	}
	third, _ := a.Certificate(web)
	if third.Serial == second.Serial || third.Issuer != a.CA().SignerSerial() {
		t.Error("activating a new root did not reissue the certificate")
	}
	if got := issuedCounter(t, reg, "sds"); got != 4 {
		t.Errorf("bowline_identity_certificates_issued_total{via=sds} = %v, want 4", got)
	}
	a.Forget(web)
	if again, _ := a.Certificate(web); again.Serial == third.Serial {
		t.Error("Forget kept the certificate")
	}
}

func issuedCounter(t *testing.T, reg *prometheus.Registry, via string) float64 {
	t.Helper()
	return counterValue(t, reg, "bowline_identity_certificates_issued_total", map[string]string{"via": via})
}

// counterValue reads one series of a counter (0 when absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestIdentityAuthorityCountsRefusals(t *testing.T) {
	a, reg := newAuthority(t, newClock(), time.Hour)
	ctx := context.Background()
	tests := []struct {
		claim  identity.Claim
		reason string
	}{
		{identity.Claim{Namespace: "default", Service: "web"}, "no_token"},
		{identity.Claim{Namespace: "default", Service: "web", Token: "wrong-0123456789"}, "unproven"},
		{identity.Claim{Namespace: "default", Service: "web", Token: "api-token-0123456789"}, "mismatch"},
	}
	for _, tt := range tests {
		if _, err := a.Attest(ctx, tt.claim, identity.ViaXDS); !errors.Is(err, identity.ErrUnproven) {
			t.Errorf("%s: %v", tt.reason, err)
		}
		got := (counterValue(t, reg, "bowline_identity_attestation_failures_total", map[string]string{"via": "xds", "reason": tt.reason}))
		if got != 1 {
			t.Errorf("failures{via=xds,reason=%s} = %v, want 1", tt.reason, got)
		}
	}
	if id, err := a.Attest(ctx, identity.Claim{Namespace: "default", Service: "web", Token: webToken}, identity.ViaXDS); err != nil || id.String() != "spiffe://mesh.example/ns/default/svc/web" {
		t.Errorf("Attest = %s, %v", id, err)
	}
}

// startSignService serves the signing service in memory.
func startSignService(t *testing.T, s identity.Signer) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	identity.RegisterSignService(g, s)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestIdentitySignService(t *testing.T) {
	clk := newClock()
	a, reg := newAuthority(t, clk, time.Hour)
	conn := startSignService(t, a)
	ctx := context.Background()
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}

	resp, err := identity.RequestSign(ctx, conn, identity.SignRequest{Namespace: "default", Service: "web", Token: webToken, CSR: csrPEM})
	if err != nil {
		t.Fatal(err)
	}
	if resp.SPIFFEID != "spiffe://mesh.example/ns/default/svc/web" || !resp.RenewAt.Equal(clk.Now().Add(30*time.Minute)) {
		t.Errorf("response = %+v", resp)
	}
	svid, err := x509svid.Parse(resp.CertChain, keyPEM)
	if err != nil {
		t.Fatalf("the signed certificate does not match the workload's key: %v", err)
	}
	roots, err := identity.ParseCerts(resp.Roots)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify(svid.Certificates, roots, clk.Now()); err != nil {
		t.Errorf("verify against the returned bundle: %v", err)
	}
	if issued := a.Issued(); len(issued) != 1 || issued[0].Via != "csr" || issued[0].Serial != svid.Certificates[0].SerialNumber.Text(16) {
		t.Errorf("Issued = %+v", issued)
	}

	tests := []struct {
		name string
		req  identity.SignRequest
		code codes.Code
	}{
		{"wrong token", identity.SignRequest{Namespace: "default", Service: "web", Token: "guess-0123456789", CSR: csrPEM}, codes.PermissionDenied},
		{"no token", identity.SignRequest{Namespace: "default", Service: "web", CSR: csrPEM}, codes.PermissionDenied},
		{"another service's token", identity.SignRequest{Namespace: "default", Service: "api", Token: webToken, CSR: csrPEM}, codes.PermissionDenied},
		{"no csr", identity.SignRequest{Namespace: "default", Service: "web", Token: webToken}, codes.InvalidArgument},
		{"a key instead of a csr", identity.SignRequest{Namespace: "default", Service: "web", Token: webToken, CSR: keyPEM}, codes.InvalidArgument},
		{"broken csr", identity.SignRequest{Namespace: "default", Service: "web", Token: webToken,
			CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("junk")})}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := identity.RequestSign(ctx, conn, tt.req)
			if status.Code(errors.Unwrap(err)) != tt.code {
				t.Fatalf("err = %v, want %s", err, tt.code)
			}
			if strings.Contains(err.Error(), webToken) {
				t.Error("the error repeats the token")
			}
		})
	}
	if got := (counterValue(t, reg, "bowline_identity_attestation_failures_total", map[string]string{"via": "sign", "reason": "mismatch"})); got != 1 {
		t.Errorf("failures{via=sign,reason=mismatch} = %v", got)
	}
	if len(a.Issued()) != 1 {
		t.Error("a refused request was issued a certificate")
	}
}
