package attest_test

import (
	"errors"
	"testing"

	authv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bowlinemesh/bowline/adapters/kubernetes/kubetest"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/identity/attest"
)

func TestKubernetesAttestor(t *testing.T) {
	cs := fake.NewClientset()
	tokens := kubetest.ServeTokenReviews(cs)
	// The catalog: web's pods run as web-sa; "legacy" has endpoints
	// without identities.
	catalog := map[string][]string{
		"default/web":    {"spiffe://mesh.example/ns/default/sa/web-sa", "spiffe://mesh.example/ns/default/sa/web-sa"},
		"default/legacy": {""},
	}
	att, err := attest.NewKubernetes(attest.KubernetesConfig{
		TrustDomain: td, Client: cs, Audiences: []string{"bowline"},
		ServiceIdentities: func(ns, name string) []string { return catalog[ns+"/"+name] },
	})
	if err != nil {
		t.Fatal(err)
	}
	revoked := tokens.Issue("default", "web-sa", "bowline")
	tokens.Revoke(revoked)

	tests := []struct {
		name    string
		claim   identity.Claim
		token   string
		want    string
		wantErr error
	}{
		{"the service's account", identity.Claim{Namespace: "default", Service: "web"}, tokens.Issue("default", "web-sa", "bowline"),
			"spiffe://mesh.example/ns/default/sa/web-sa", nil},
		{"one of the token's audiences", identity.Claim{Namespace: "default", Service: "web"}, tokens.Issue("default", "web-sa", kubetest.APIAudience, "bowline"),
			"spiffe://mesh.example/ns/default/sa/web-sa", nil},
		{"a service the catalog does not know", identity.Claim{Namespace: "default", Service: "new"}, tokens.Issue("default", "new-sa", "bowline"),
			"spiffe://mesh.example/ns/default/sa/new-sa", nil},
		{"a service without identities in the catalog", identity.Claim{Namespace: "default", Service: "legacy"}, tokens.Issue("default", "legacy", "bowline"),
			"spiffe://mesh.example/ns/default/sa/legacy", nil},

		{"the service runs as another account", identity.Claim{Namespace: "default", Service: "web"}, tokens.Issue("default", "other-sa", "bowline"), "", identity.ErrMismatch},
		{"an account of another namespace", identity.Claim{Namespace: "default", Service: "web"}, tokens.Issue("payments", "web-sa", "bowline"), "", identity.ErrMismatch},

		{"a token for the API server only", identity.Claim{Namespace: "default", Service: "web"}, tokens.Issue("default", "web-sa"), "", identity.ErrUnproven},
		{"a revoked token", identity.Claim{Namespace: "default", Service: "web"}, revoked, "", identity.ErrUnproven},
		{"no token", identity.Claim{Namespace: "default", Service: "web"}, "", "", identity.ErrUnproven},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.claim.Token = tt.token
			id, err := att.Attest(t.Context(), tt.claim)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr == identity.ErrUnproven && errors.Is(err, identity.ErrMismatch) {
					t.Fatalf("err = %v: a mismatch, want only unproven", err)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("Attest = %s, %v; want %s", id, err, tt.want)
			}
		})
	}

	t.Run("other platforms' secrets are not sent to the API server", func(t *testing.T) {
		before := tokens.Reviews()
		for _, tok := range []string{
			"6f1e2d3c-4b5a-4968-8776-655443322110", // a Consul token
			"a-join-token-0123456789",
			// A JWT without Kubernetes claims (a Nomad workload identity's shape).
			"eyJhbGciOiJSUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJKV1QifQ.eyJub21hZF9uYW1lc3BhY2UiOiJkZWZhdWx0Iiwibm9tYWRfam9iX2lkIjoid2ViIn0.c2lnbmF0dXJl",
		} {
			if _, err := att.Attest(t.Context(), identity.Claim{Namespace: "default", Service: "web", Token: tok}); !errors.Is(err, identity.ErrUnproven) {
				t.Errorf("%.20s…: %v", tok, err)
			}
		}
		if n := tokens.Reviews() - before; n != 0 {
			t.Errorf("%d reviews were asked for tokens that are not Kubernetes'", n)
		}
	})
}

func TestKubernetesAttestorAPIServer(t *testing.T) {
	answer := func(st authv1.TokenReviewStatus, err error) *fake.Clientset {
		cs := fake.NewClientset()
		cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
			r := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenReview).DeepCopy()
			r.Status = st
			return true, r, err
		})
		return cs
	}
	token := kubetest.ServeTokenReviews(fake.NewClientset()).Issue("default", "web-sa", "bowline")
	claim := identity.Claim{Namespace: "default", Service: "web", Token: token}

	t.Run("unreachable: undecided", func(t *testing.T) {
		att, _ := attest.NewKubernetes(attest.KubernetesConfig{TrustDomain: td, Client: answer(authv1.TokenReviewStatus{}, errors.New("connection refused"))})
		if _, err := att.Attest(t.Context(), claim); err == nil || errors.Is(err, identity.ErrUnproven) {
			t.Fatalf("err = %v, want an undecided claim", err)
		}
	})
	t.Run("audiences the review did not ask for are not trusted", func(t *testing.T) {
		att, _ := attest.NewKubernetes(attest.KubernetesConfig{TrustDomain: td, Audiences: []string{"bowline"}, Client: answer(authv1.TokenReviewStatus{
			Authenticated: true, Audiences: []string{"other"}, User: authv1.UserInfo{Username: "system:serviceaccount:default:web-sa"},
		}, nil)})
		if _, err := att.Attest(t.Context(), claim); !errors.Is(err, identity.ErrUnproven) {
			t.Fatalf("err = %v, want unproven", err)
		}
	})
	t.Run("a user that is not a service account", func(t *testing.T) {
		att, _ := attest.NewKubernetes(attest.KubernetesConfig{TrustDomain: td, Client: answer(authv1.TokenReviewStatus{
			Authenticated: true, User: authv1.UserInfo{Username: "jane@example.com"},
		}, nil)})
		if _, err := att.Attest(t.Context(), claim); !errors.Is(err, identity.ErrUnproven) {
			t.Fatalf("err = %v, want unproven", err)
		}
	})
}
