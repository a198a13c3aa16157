package main

import (
	"cmp"
	"errors"
	"os"

	"github.com/bowlinemesh/bowline/adapters/kubernetes"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/identity/attest"
	"github.com/bowlinemesh/bowline/xds/controlplane"
)

// attestorsFor lists, in one place, the attestors that the startup
// configuration's `identity { attest { … } }` turns on, besides join
// tokens; each reaches its platform where the registry block of that
// platform points, unless the attest block says otherwise. Read at startup:
// changing them needs a restart.
func attestorsFor(cfg *config.Config, env controlplane.AttestEnv) ([]identity.Attestor, error) {
	a := cfg.Attest()
	if a == nil {
		return nil, nil
	}
	var out []identity.Attestor
	if d := a.Consul; d != nil {
		c := attest.ConsulConfig{TrustDomain: env.TrustDomain, Address: d.Address, Datacenter: d.Datacenter}
		if b := cfg.Consul; b != nil {
			c.Address, c.Datacenter = cmp.Or(c.Address, b.Address), cmp.Or(c.Datacenter, b.Datacenter)
		}
		att, err := attest.NewConsul(c)
		if err != nil {
			return nil, err
		}
		out = append(out, att)
	}
	if d := a.Nomad; d != nil {
		c := attest.NomadConfig{TrustDomain: env.TrustDomain, Audience: d.Audience, JWKSURL: d.JWKSURL}
		if b := cfg.Nomad; b != nil {
			c.Address, c.Token, c.Region = b.Address, cmp.Or(b.Token, os.Getenv("NOMAD_TOKEN")), b.Region
			c.CAFile = cmp.Or(b.CAFile, os.Getenv("NOMAD_CACERT"))
			c.CertFile = cmp.Or(b.CertFile, os.Getenv("NOMAD_CLIENT_CERT"))
			c.KeyFile = cmp.Or(b.KeyFile, os.Getenv("NOMAD_CLIENT_KEY"))
		}
		if c.JWKSURL == "" && c.Address == "" {
			return nil, errors.New("identity: attest nomad: set jwks_url, or declare a nomad block whose agent serves the JWKS")
		}
		att, err := attest.NewNomad(c)
		if err != nil {
			return nil, err
		}
		out = append(out, att)
	}
	if d := a.Kubernetes; d != nil {
		kubeconfig := d.Kubeconfig
		if b := cfg.Kubernetes; b != nil && kubeconfig == "" {
			kubeconfig = b.Kubeconfig
		}
		client, err := kubernetes.NewClientset(kubeconfig)
		if err != nil {
			return nil, err
		}
		att, err := attest.NewKubernetes(attest.KubernetesConfig{TrustDomain: env.TrustDomain, Client: client, Audiences: d.Audiences, ServiceIdentities: env.ServiceIdentities})
		if err != nil {
			return nil, err
		}
		out = append(out, att)
	}
	return out, nil
}
