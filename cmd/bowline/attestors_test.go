package main

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/xds/controlplane"
)

func TestAttestorsFor(t *testing.T) {
	env := controlplane.AttestEnv{TrustDomain: spiffeid.RequireTrustDomainFromString("bowline.local")}
	withAttest := func(a *config.AttestDecl, mod func(*config.Config)) *config.Config {
		c := &config.Config{Identity: &config.IdentityDecl{Attest: a}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	if got, err := attestorsFor(&config.Config{}, env); err != nil || got != nil {
		t.Errorf("no attest block: %v, %v", got, err)
	}
	got, err := attestorsFor(withAttest(&config.AttestDecl{Consul: &config.ConsulAttestDecl{}, Nomad: &config.NomadAttestDecl{Audience: "bowline"}}, func(c *config.Config) {
		c.Consul = &config.ConsulDecl{Address: "127.0.0.1:8500"}
		c.Nomad = &config.NomadDecl{Address: "http://127.0.0.1:4646"}
	}), env)
	if err != nil || len(got) != 2 || got[0].Name() != "consul" || got[1].Name() != "nomad" {
		t.Fatalf("consul and nomad: %v, %v", got, err)
	}
	if _, err := attestorsFor(withAttest(&config.AttestDecl{Nomad: &config.NomadAttestDecl{Audience: "bowline"}}, nil), env); err == nil {
		t.Error("nomad without a nomad block or jwks_url: accepted")
	}
	got, err = attestorsFor(withAttest(&config.AttestDecl{Nomad: &config.NomadAttestDecl{Audience: "bowline", JWKSURL: "https://nomad.example/.well-known/jwks.json"}}, nil), env)
	if err != nil || len(got) != 1 {
		t.Errorf("nomad with jwks_url alone: %v, %v", got, err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := attestorsFor(withAttest(&config.AttestDecl{Kubernetes: &config.KubernetesAttestDecl{}}, nil), env); err == nil {
		t.Error("kubernetes outside a cluster without kubeconfig: accepted")
	}
}
