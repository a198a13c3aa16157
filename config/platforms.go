package config

import (
	"cmp"
	"fmt"
	"os"
	"regexp"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// DefaultNomadAddress is the Nomad address of a nomad block that sets none
// when NOMAD_ADDR is unset too, as for Nomad's CLI.
const DefaultNomadAddress = "http://127.0.0.1:4646"

// NomadDecl is the `nomad` block that enables the Nomad adapter.
type NomadDecl struct {
	// Address is the block's address; when the block omits it, NOMAD_ADDR,
	// else DefaultNomadAddress (resolved when the block is decoded).
	Address   string
	Token     string
	Namespace string
	Region    string
	CAFile    string
	CertFile  string
	KeyFile   string
	DeclRange hcl.Range
}

// KubernetesDecl is the `kubernetes` block that enables the Kubernetes adapter.
type KubernetesDecl struct {
	// Kubeconfig is a kubeconfig path; empty means in-cluster configuration.
	Kubeconfig string
	// Namespaces limits discovery; empty means all namespaces.
	Namespaces []string
	DeclRange  hcl.Range
}

var nomadSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "address"}, {Name: "token"}, {Name: "namespace"}, {Name: "region"},
		{Name: "ca_file"}, {Name: "cert_file"}, {Name: "key_file"},
	},
}

func decodeNomadBlock(b *hcl.Block) (*NomadDecl, hcl.Diagnostics) {
	n := &NomadDecl{Address: cmp.Or(os.Getenv("NOMAD_ADDR"), DefaultNomadAddress), Namespace: "*", DeclRange: b.DefRange}
	content, diags := b.Body.Content(nomadSchema)
	for name, dst := range map[string]*string{
		"address": &n.Address, "token": &n.Token, "namespace": &n.Namespace, "region": &n.Region,
		"ca_file": &n.CAFile, "cert_file": &n.CertFile, "key_file": &n.KeyFile,
	} {
		if a, ok := content.Attributes[name]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, dst)...)
		}
	}
	if (n.CertFile == "") != (n.KeyFile == "") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Incomplete client certificate",
			Detail: "cert_file and key_file go together: set both or neither.", Subject: b.DefRange.Ptr()})
	}
	return n, diags
}

// kubeNamespaceRe is an RFC 1123 label, the form of a Kubernetes namespace
// name (with at most 63 characters).
var kubeNamespaceRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

var kubernetesSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "kubeconfig"}, {Name: "namespaces"}},
}

func decodeKubernetesBlock(b *hcl.Block) (*KubernetesDecl, hcl.Diagnostics) {
	k := &KubernetesDecl{DeclRange: b.DefRange}
	content, diags := b.Body.Content(kubernetesSchema)
	if a, ok := content.Attributes["kubeconfig"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &k.Kubeconfig)...)
	}
	if a, ok := content.Attributes["namespaces"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &k.Namespaces)...)
		for _, ns := range k.Namespaces {
			if len(ns) > 63 || !kubeNamespaceRe.MatchString(ns) {
				diags = append(diags, attrError(a, "Invalid namespace",
					fmt.Sprintf("%q is not a valid Kubernetes namespace name: at most 63 lower case letters, digits and '-', starting and ending with a letter or digit.", ns)))
			}
		}
	}
	return k, diags
}
