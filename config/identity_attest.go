package config

import (
	"net/url"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// DefaultNomadAudience is the audience a Nomad workload identity must have
// when the attest block names none.
const DefaultNomadAudience = "bowline"

// AttestDecl is the `attest` block inside `identity`: the attestors that
// prove workload identities besides join tokens (which are on whenever a
// join_token is declared). Each platform's block turns its attestor on.
// Read at startup, like the registry blocks.
type AttestDecl struct {
	Consul     *ConsulAttestDecl
	Nomad      *NomadAttestDecl
	Kubernetes *KubernetesAttestDecl
	DeclRange  hcl.Range
}

// ConsulAttestDecl turns on Consul ACL tokens as proofs. Address and
// Datacenter default to the `consul` block's (else Consul's defaults and
// CONSUL_* variables).
type ConsulAttestDecl struct {
	Address    string
	Datacenter string
	DeclRange  hcl.Range
}

// NomadAttestDecl turns on Nomad workload identities as proofs. JWKSURL
// defaults to the `nomad` block's address + /.well-known/jwks.json, and
// the `nomad` block's address, token and TLS files reach the allocations
// that task identities name.
type NomadAttestDecl struct {
	Audience  string
	JWKSURL   string
	DeclRange hcl.Range
}

// KubernetesAttestDecl turns on Kubernetes service account tokens as
// proofs, checked with TokenReviews through the `kubernetes` block's
// client (Kubeconfig overrides it; both empty: in-cluster).
type KubernetesAttestDecl struct {
	Audiences  []string
	Kubeconfig string
	DeclRange  hcl.Range
}

// Attest returns the attest block (nil without one).
func (c *Config) Attest() *AttestDecl {
	if c == nil || c.Identity == nil {
		return nil
	}
	return c.Identity.Attest
}

var attestSchema = &hcl.BodySchema{
	Blocks: []hcl.BlockHeaderSchema{{Type: "consul"}, {Type: "nomad"}, {Type: "kubernetes"}},
}

var (
	consulAttestSchema     = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "address"}, {Name: "datacenter"}}}
	nomadAttestSchema      = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "audience"}, {Name: "jwks_url"}}}
	kubernetesAttestSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "audiences"}, {Name: "kubeconfig"}}}
)

func decodeAttestBlock(b *hcl.Block) (*AttestDecl, hcl.Diagnostics) {
	a := &AttestDecl{DeclRange: b.DefRange}
	content, diags := b.Body.Content(attestSchema)
	seen := map[string]hcl.Range{}
	for _, sb := range content.Blocks {
		if prev, dup := seen[sb.Type]; dup {
			diags = append(diags, duplicateBlock("attest "+sb.Type, sb, prev))
			continue
		}
		seen[sb.Type] = sb.DefRange
		switch sb.Type {
		case "consul":
			d, ds := decodeConsulAttest(sb)
			diags = append(diags, ds...)
			a.Consul = d
		case "nomad":
			d, ds := decodeNomadAttest(sb)
			diags = append(diags, ds...)
			a.Nomad = d
		case "kubernetes":
			d, ds := decodeKubernetesAttest(sb)
			diags = append(diags, ds...)
			a.Kubernetes = d
		}
	}
	return a, diags
}

func decodeConsulAttest(b *hcl.Block) (*ConsulAttestDecl, hcl.Diagnostics) {
	d := &ConsulAttestDecl{DeclRange: b.DefRange}
	content, diags := b.Body.Content(consulAttestSchema)
	for name, dst := range map[string]*string{"address": &d.Address, "datacenter": &d.Datacenter} {
		if a, ok := content.Attributes[name]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, dst)...)
		}
	}
	return d, diags
}

func decodeNomadAttest(b *hcl.Block) (*NomadAttestDecl, hcl.Diagnostics) {
	d := &NomadAttestDecl{Audience: DefaultNomadAudience, DeclRange: b.DefRange}
	content, diags := b.Body.Content(nomadAttestSchema)
	if a, ok := content.Attributes["audience"]; ok {
		ds := gohcl.DecodeExpression(a.Expr, nil, &d.Audience)
		diags = append(diags, ds...)
		if !ds.HasErrors() && d.Audience == "" {
			diags = append(diags, attrError(a, "Empty audience", "A workload identity must be checked against an audience: give the identity in the job an `aud` for Bowline (such as \"bowline\") and name it here."))
		}
	}
	if a, ok := content.Attributes["jwks_url"]; ok {
		ds := gohcl.DecodeExpression(a.Expr, nil, &d.JWKSURL)
		diags = append(diags, ds...)
		if u, err := url.Parse(d.JWKSURL); !ds.HasErrors() && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
			diags = append(diags, attrError(a, "Invalid jwks_url", "jwks_url is an http or https URL, such as \"https://nomad.example:4646/.well-known/jwks.json\"."))
		}
	}
	return d, diags
}

func decodeKubernetesAttest(b *hcl.Block) (*KubernetesAttestDecl, hcl.Diagnostics) {
	d := &KubernetesAttestDecl{DeclRange: b.DefRange}
	content, diags := b.Body.Content(kubernetesAttestSchema)
	if a, ok := content.Attributes["audiences"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &d.Audiences)...)
	}
	if a, ok := content.Attributes["kubeconfig"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &d.Kubeconfig)...)
	}
	return d, diags
}
