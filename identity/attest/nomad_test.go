package attest_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/adapters/nomad/nomadtest"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/identity/attest"
)

const nomadReadToken = "nomad-read-token-0123456789"

// nomadCluster is a Nomad double running job "web" (group service "web",
// the task "app"'s service "web-admin") and job "api".
func nomadCluster(t *testing.T) (srv *nomadtest.Server, webAlloc, apiAlloc string) {
	t.Helper()
	srv = nomadtest.Start(t, nomadtest.Options{Token: nomadReadToken})
	srv.SubmitJob(nomadtest.Job{ID: "web", Services: []nomadtest.Service{
		{Name: "web", PortLabel: "http"},
		{Name: "web-admin", PortLabel: "admin", Task: "app"},
	}})
	srv.SubmitJob(nomadtest.Job{ID: "api", Services: []nomadtest.Service{{Name: "api", PortLabel: "http"}}})
	webAlloc = srv.StartAlloc("default", "web", map[string]int{"http": 28080, "admin": 28081})
	apiAlloc = srv.StartAlloc("default", "api", map[string]int{"http": 28090})
	return srv, webAlloc, apiAlloc
}

func TestNomadAttestor(t *testing.T) {
	srv, webAlloc, apiAlloc := nomadCluster(t)
	att, err := attest.NewNomad(attest.NomadConfig{TrustDomain: td, Audience: "bowline", Address: srv.URL(), Token: nomadReadToken})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	task := func(alloc, job string) nomadtest.Identity {
		return nomadtest.Identity{JobID: job, AllocID: alloc, Task: "sidecar", Audience: []string{"bowline"}, TTL: time.Hour}
	}
	with := func(id nomadtest.Identity, f func(*nomadtest.Identity)) nomadtest.Identity { f(&id); return id }
	webTask := task(webAlloc, "web")

	tests := []struct {
		name    string
		claim   identity.Claim
		token   string
		want    string
		wantErr error
	}{
		{"task identity: its group's service", identity.Claim{Namespace: "default", Service: "web"}, srv.MintIdentity(webTask),
			"spiffe://mesh.example/ns/default/svc/web", nil},
		{"task identity: a task's service of its group", identity.Claim{Namespace: "default", Service: "web-admin"}, srv.MintIdentity(webTask),
			"spiffe://mesh.example/ns/default/svc/web-admin", nil},
		{"service identity", identity.Claim{Namespace: "default", Service: "api"},
			srv.MintIdentity(nomadtest.Identity{JobID: "api", AllocID: apiAlloc, Service: "api", Audience: []string{"bowline"}, TTL: time.Hour}),
			"spiffe://mesh.example/ns/default/svc/api", nil},
		{"one of several audiences", identity.Claim{Namespace: "default", Service: "web"},
			srv.MintIdentity(with(webTask, func(i *nomadtest.Identity) { i.Audience = []string{"vault.io", "bowline"} })),
			"spiffe://mesh.example/ns/default/svc/web", nil},

		{"expired", identity.Claim{Namespace: "default", Service: "web"},
			srv.MintIdentity(with(webTask, func(i *nomadtest.Identity) { i.IssuedAt = time.Now().Add(-3 * time.Hour) })), "", identity.ErrUnproven},
		{"no expiry", identity.Claim{Namespace: "default", Service: "web"},
			srv.MintIdentity(with(webTask, func(i *nomadtest.Identity) { i.TTL = 0 })), "", identity.ErrUnproven},
		{"not yet valid", identity.Claim{Namespace: "default", Service: "web"},
			srv.MintIdentity(with(webTask, func(i *nomadtest.Identity) { i.IssuedAt = time.Now().Add(time.Hour) })), "", identity.ErrUnproven},
		{"wrong audience", identity.Claim{Namespace: "default", Service: "web"},
			srv.MintIdentity(with(webTask, func(i *nomadtest.Identity) { i.Audience = []string{"nomadproject.io"} })), "", identity.ErrUnproven},
		{"bad signature", identity.Claim{Namespace: "default", Service: "web"}, srv.ForgeIdentity(webTask), "", identity.ErrUnproven},
		{"allocation of another job", identity.Claim{Namespace: "default", Service: "api"}, srv.MintIdentity(task(apiAlloc, "web")), "", identity.ErrUnproven},
		{"unknown allocation", identity.Claim{Namespace: "default", Service: "web"},
			srv.MintIdentity(task("00000000-0000-4000-8000-000000000000", "web")), "", identity.ErrUnproven},
		{"not a JWT", identity.Claim{Namespace: "default", Service: "web"}, "6f1e2d3c-4b5a-4968-8776-655443322110", "", identity.ErrUnproven},
		{"no token", identity.Claim{Namespace: "default", Service: "web"}, "", "", identity.ErrUnproven},

		{"task identity: a service its allocation does not declare", identity.Claim{Namespace: "default", Service: "api"}, srv.MintIdentity(webTask), "", identity.ErrMismatch},
		{"service identity of another service", identity.Claim{Namespace: "default", Service: "web"},
			srv.MintIdentity(nomadtest.Identity{JobID: "api", Service: "api", Audience: []string{"bowline"}, TTL: time.Hour}), "", identity.ErrMismatch},
		{"another namespace", identity.Claim{Namespace: "payments", Service: "web"}, srv.MintIdentity(webTask), "", identity.ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.claim.Token = tt.token
			id, err := att.Attest(ctx, tt.claim)
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
	if n := srv.Requests(nomadtest.JWKSPath); n != 1 {
		t.Errorf("the JWKS was read %d times, want once (cached)", n)
	}

	t.Run("a stopped allocation's identity proves nothing", func(t *testing.T) {
		token := srv.MintIdentity(task(apiAlloc, "api"))
		if _, err := att.Attest(ctx, identity.Claim{Namespace: "default", Service: "api", Token: token}); err != nil {
			t.Fatalf("before the stop: %v", err)
		}
		srv.StopAlloc(apiAlloc)
		if _, err := att.Attest(ctx, identity.Claim{Namespace: "default", Service: "api", Token: token}); !errors.Is(err, identity.ErrUnproven) {
			t.Fatalf("after the stop: %v", err)
		}
	})

	t.Run("Nomad unreachable: a task identity is undecided, a service identity still proven with the cached keys", func(t *testing.T) {
		srv.Down()
		_, err := att.Attest(ctx, identity.Claim{Namespace: "default", Service: "web", Token: srv.MintIdentity(webTask)})
		if err == nil || errors.Is(err, identity.ErrUnproven) {
			t.Fatalf("task identity: err = %v, want an undecided claim", err)
		}
		svc := srv.MintIdentity(nomadtest.Identity{JobID: "web", Service: "web", Audience: []string{"bowline"}, TTL: time.Hour})
		if _, err := att.Attest(ctx, identity.Claim{Namespace: "default", Service: "web", Token: svc}); err != nil {
			t.Fatalf("service identity: %v", err)
		}
	})
}

func TestNomadAttestorWithoutAPI(t *testing.T) {
	srv, webAlloc, _ := nomadCluster(t)
	att, err := attest.NewNomad(attest.NomadConfig{TrustDomain: td, Audience: "bowline", JWKSURL: srv.URL() + nomadtest.JWKSPath})
	if err != nil {
		t.Fatal(err)
	}
	svc := srv.MintIdentity(nomadtest.Identity{JobID: "web", Service: "web", Audience: []string{"bowline"}, TTL: time.Hour})
	if _, err := att.Attest(t.Context(), identity.Claim{Namespace: "default", Service: "web", Token: svc}); err != nil {
		t.Errorf("service identity: %v", err)
	}
	task := srv.MintIdentity(nomadtest.Identity{JobID: "web", AllocID: webAlloc, Task: "sidecar", Audience: []string{"bowline"}, TTL: time.Hour})
	if _, err := att.Attest(t.Context(), identity.Claim{Namespace: "default", Service: "web", Token: task}); !errors.Is(err, identity.ErrUnproven) {
		t.Errorf("task identity without Nomad's API: %v, want unproven", err)
	}
}

func TestNomadAttestorJWKSUnreachable(t *testing.T) {
	srv, _, _ := nomadCluster(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + nomadtest.JWKSPath
	l.Close()
	att, err := attest.NewNomad(attest.NomadConfig{TrustDomain: td, Audience: "bowline", JWKSURL: closed})
	if err != nil {
		t.Fatal(err)
	}
	svc := srv.MintIdentity(nomadtest.Identity{JobID: "web", Service: "web", Audience: []string{"bowline"}, TTL: time.Hour})
	if _, err := att.Attest(t.Context(), identity.Claim{Namespace: "default", Service: "web", Token: svc}); err == nil || errors.Is(err, identity.ErrUnproven) {
		t.Errorf("err = %v, want an undecided claim", err)
	}
	if _, err := attest.NewNomad(attest.NomadConfig{TrustDomain: td, Audience: "bowline"}); err == nil {
		t.Error("an attestor without JWKS URL or address was built")
	}
	if _, err := attest.NewNomad(attest.NomadConfig{TrustDomain: td, JWKSURL: closed}); err == nil {
		t.Error("an attestor without audience was built")
	}
}
