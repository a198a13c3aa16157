package attest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/identity/attest"
	"github.com/bowlinemesh/bowline/test/consulagent"
)

var td = spiffeid.RequireTrustDomainFromString("mesh.example")

const consulManagement = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"

// consulTokens creates, in an agent with ACLs on, tokens with different
// rights and returns their secrets by name.
func consulTokens(t *testing.T, agent *consulagent.Agent) map[string]string {
	t.Helper()
	client, err := api.NewClient(&api.Config{Address: agent.Address(), Token: consulManagement})
	if err != nil {
		t.Fatal(err)
	}
	acl := client.ACL()
	policy := func(name, rules string) *api.ACLTokenPolicyLink {
		p, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
		if err != nil {
			t.Fatalf("create policy %s: %v", name, err)
		}
		return &api.ACLTokenPolicyLink{ID: p.ID}
	}
	role, _, err := acl.RoleCreate(&api.ACLRole{Name: "payments-team", Policies: []*api.ACLRolePolicyLink{{ID: policy("payments-prefix", `service_prefix "pay" { policy = "write" }`).ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	specs := map[string]*api.ACLToken{
		"web":      {Description: "web's service identity", ServiceIdentities: []*api.ACLServiceIdentity{{ServiceName: "web"}}},
		"api":      {Description: "a policy that writes api", Policies: []*api.ACLTokenPolicyLink{policy("api-write", `service "api" { policy = "write" }`)}},
		"payments": {Description: "a role with a prefix", Roles: []*api.ACLTokenRoleLink{{ID: role.ID}}},
		"reader":   {Description: "reads web only", Policies: []*api.ACLTokenPolicyLink{policy("web-read", `service "web" { policy = "read" }`)}},
		"deleted":  {Description: "deleted at once", ServiceIdentities: []*api.ACLServiceIdentity{{ServiceName: "web"}}},
		"expiring": {Description: "expires", ServiceIdentities: []*api.ACLServiceIdentity{{ServiceName: "web"}}, ExpirationTTL: time.Hour},
	}
	out := map[string]string{}
	for name, spec := range specs {
		tok, _, err := acl.TokenCreate(spec, nil)
		if err != nil {
			t.Fatalf("create token %s: %v", name, err)
		}
		out[name] = tok.SecretID
		if name == "deleted" {
			if _, err := acl.TokenDelete(tok.AccessorID, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

func TestConsulAttestor(t *testing.T) {
	agent := consulagent.StartWith(t, consulagent.Options{ACLManagementToken: consulManagement})
	tokens := consulTokens(t, agent)
	att, err := attest.NewConsul(attest.ConsulConfig{TrustDomain: td, Address: agent.Address()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	tests := []struct {
		name    string
		claim   identity.Claim
		want    string
		wantErr error
	}{
		{"service identity", identity.Claim{Namespace: "default", Service: "web", Token: tokens["web"]}, "spiffe://mesh.example/ns/default/svc/web", nil},
		{"token with an expiry", identity.Claim{Namespace: "default", Service: "web", Token: tokens["expiring"]}, "spiffe://mesh.example/ns/default/svc/web", nil},
		{"policy granting service:write", identity.Claim{Namespace: "default", Service: "api", Token: tokens["api"]}, "spiffe://mesh.example/ns/default/svc/api", nil},
		{"role with a service_prefix", identity.Claim{Namespace: "default", Service: "payments", Token: tokens["payments"]}, "spiffe://mesh.example/ns/default/svc/payments", nil},
		{"management token", identity.Claim{Namespace: "default", Service: "anything", Token: consulManagement}, "spiffe://mesh.example/ns/default/svc/anything", nil},
		{"another service's token", identity.Claim{Namespace: "default", Service: "api", Token: tokens["web"]}, "", identity.ErrMismatch},
		{"a policy for another service", identity.Claim{Namespace: "default", Service: "web", Token: tokens["api"]}, "", identity.ErrMismatch},
		{"read is not write", identity.Claim{Namespace: "default", Service: "web", Token: tokens["reader"]}, "", identity.ErrMismatch},
		{"outside the prefix", identity.Claim{Namespace: "default", Service: "ledger", Token: tokens["payments"]}, "", identity.ErrMismatch},
		{"another namespace", identity.Claim{Namespace: "payments", Service: "web", Token: tokens["web"]}, "", identity.ErrMismatch},
		{"bogus token", identity.Claim{Namespace: "default", Service: "web", Token: "6f1e2d3c-4b5a-4968-8776-655443322110"}, "", identity.ErrUnproven},
		{"deleted token", identity.Claim{Namespace: "default", Service: "web", Token: tokens["deleted"]}, "", identity.ErrUnproven},
		{"not a Consul token", identity.Claim{Namespace: "default", Service: "web", Token: "a-join-token-0123456789"}, "", identity.ErrUnproven},
		{"no token", identity.Claim{Namespace: "default", Service: "web"}, "", identity.ErrUnproven},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := att.Attest(ctx, tt.claim)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr == identity.ErrUnproven && errors.Is(err, identity.ErrMismatch) {
					t.Fatalf("err = %v: a mismatch, want only unproven", err)
				}
				if strings.Contains(err.Error(), tt.claim.Token) && tt.claim.Token != "" {
					t.Fatalf("the error shows the token: %v", err)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("Attest = %s, %v; want %s", id, err, tt.want)
			}
		})
	}

	t.Run("through the authority: the right token gets a certificate, the others are counted", func(t *testing.T) {
		ca, err := identity.New(ctx, identity.Options{TrustDomain: td})
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		auth := identity.NewAuthority(identity.AuthorityOptions{CA: ca, Attestor: identity.Attestors{att}, Registerer: reg})
		_, csrPEM, err := identity.NewKeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		csr := pemBlock(t, csrPEM)
		cert, err := auth.Sign(ctx, identity.Claim{Namespace: "default", Service: "web", Token: tokens["web"]}, csr)
		if err != nil || cert.ID.String() != "spiffe://mesh.example/ns/default/svc/web" {
			t.Fatalf("Sign = %v, %v", cert, err)
		}
		if _, err := auth.Sign(ctx, identity.Claim{Namespace: "default", Service: "api", Token: tokens["web"]}, csr); !errors.Is(err, identity.ErrMismatch) {
			t.Fatalf("another service's token: %v", err)
		}
		if _, err := auth.Sign(ctx, identity.Claim{Namespace: "default", Service: "web", Token: "6f1e2d3c-4b5a-4968-8776-655443322110"}, csr); !errors.Is(err, identity.ErrUnproven) {
			t.Fatalf("bogus token: %v", err)
		}
		for reason, want := range map[string]float64{"mismatch": 1, "unproven": 1, "error": 0} {
			if got := failures(t, reg, "sign", reason); got != want {
				t.Errorf("failures{reason=%q} = %v, want %v", reason, got, want)
			}
		}
	})

	t.Run("Consul unreachable: undecided, not refused", func(t *testing.T) {
		agent.Stop()
		_, err := att.Attest(ctx, identity.Claim{Namespace: "default", Service: "web", Token: tokens["web"]})
		if err == nil || errors.Is(err, identity.ErrUnproven) {
			t.Fatalf("err = %v, want an error that is not a refusal", err)
		}
	})
}

func TestConsulAttestorACLsDisabled(t *testing.T) {
	agent := consulagent.Start(t)
	att, err := attest.NewConsul(attest.ConsulConfig{TrustDomain: td, Address: "http://" + agent.Address()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = att.Attest(context.Background(), identity.Claim{Namespace: "default", Service: "web", Token: "6f1e2d3c-4b5a-4968-8776-655443322110"})
	if err == nil || errors.Is(err, identity.ErrUnproven) || !strings.Contains(err.Error(), "ACLs are disabled") {
		t.Fatalf("err = %v, want an undecided claim that says ACLs are disabled", err)
	}
}
