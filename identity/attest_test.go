package identity_test

import (
	"context"
	"errors"
	"testing"

	"github.com/bowlinemesh/bowline/identity"
)

func TestIdentityJoinTokens(t *testing.T) {
	tokens := []identity.JoinToken{
		{Namespace: "default", Service: "web", SHA256: identity.HashToken("web-token-0123456789")},
		{Namespace: "default", Service: "web", SHA256: identity.HashToken("web-token-next-0123456789")},
		{Namespace: "payments", Service: "ledger", SHA256: identity.HashToken("ledger-token-0123456789")},
	}
	att := identity.NewJoinTokens(td, func() []identity.JoinToken { return tokens })
	tests := []struct {
		name    string
		claim   identity.Claim
		want    string
		wantErr error
	}{
		{"proven", identity.Claim{Namespace: "default", Service: "web", Token: "web-token-0123456789"}, "spiffe://mesh.example/ns/default/svc/web", nil},
		{"second token of a service", identity.Claim{Namespace: "default", Service: "web", Token: "web-token-next-0123456789"}, "spiffe://mesh.example/ns/default/svc/web", nil},
		{"other namespace", identity.Claim{Namespace: "payments", Service: "ledger", Token: "ledger-token-0123456789"}, "spiffe://mesh.example/ns/payments/svc/ledger", nil},
		{"no token", identity.Claim{Namespace: "default", Service: "web"}, "", identity.ErrUnproven},
		{"wrong token", identity.Claim{Namespace: "default", Service: "web", Token: "guess-0123456789"}, "", identity.ErrUnproven},
		{"another service's token", identity.Claim{Namespace: "default", Service: "web", Token: "ledger-token-0123456789"}, "", identity.ErrMismatch},
		{"right name, wrong namespace", identity.Claim{Namespace: "payments", Service: "web", Token: "web-token-0123456789"}, "", identity.ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := att.Attest(context.Background(), tt.claim)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !errors.Is(err, identity.ErrUnproven) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("Attest = %s, %v; want %s", id, err, tt.want)
			}
		})
	}

	// Tokens are read on every attestation: removing one takes effect at once.
	tokens = tokens[1:]
	if _, err := att.Attest(context.Background(), identity.Claim{Namespace: "default", Service: "web", Token: "web-token-0123456789"}); !errors.Is(err, identity.ErrUnproven) {
		t.Errorf("a removed token still proves: %v", err)
	}
}

func TestIdentityAttestorsChain(t *testing.T) {
	a := identity.NewJoinTokens(td, func() []identity.JoinToken {
		return []identity.JoinToken{{Namespace: "default", Service: "a", SHA256: identity.HashToken("a-token-0123456789")}}
	})
	b := identity.NewJoinTokens(td, func() []identity.JoinToken {
		return []identity.JoinToken{{Namespace: "default", Service: "b", SHA256: identity.HashToken("b-token-0123456789")}}
	})
	chain := identity.Attestors{a, b}
	if id, err := chain.Attest(context.Background(), identity.Claim{Namespace: "default", Service: "b", Token: "b-token-0123456789"}); err != nil || id.String() != "spiffe://mesh.example/ns/default/svc/b" {
		t.Errorf("second attestor: %s, %v", id, err)
	}
	if _, err := chain.Attest(context.Background(), identity.Claim{Namespace: "default", Service: "b", Token: "nope-0123456789"}); !errors.Is(err, identity.ErrUnproven) {
		t.Errorf("no attestor proves: %v", err)
	}
	if _, err := (identity.Attestors{}).Attest(context.Background(), identity.Claim{Namespace: "default", Service: "b", Token: "x"}); !errors.Is(err, identity.ErrUnproven) {
		t.Errorf("no attestors: %v", err)
	}
}
