package config

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// MTLSMode says how a service takes inbound connections and how mesh clients
// call it.
type MTLSMode string

// The mTLS modes.
const (
	// MTLSStrict: inbound connections must present a certificate issued by
	// the mesh CA; clients call over mTLS.
	MTLSStrict MTLSMode = "strict"
	// MTLSPermissive: inbound accepts mTLS and plaintext (Envoy sidecars tell
	// them apart with the TLS inspector). Mesh clients with an identity call
	// sidecars over mTLS; proxyless gRPC servers cannot tell TLS from
	// plaintext on one port (gRFC A36), so they serve plaintext in this mode.
	MTLSPermissive MTLSMode = "permissive"
	// MTLSDisabled: plaintext only.
	MTLSDisabled MTLSMode = "disabled"
)

// Identity defaults.
const (
	DefaultMTLSMode = MTLSPermissive
	DefaultCertTTL  = 24 * time.Hour
	minCertTTL      = time.Second
	maxCertTTL      = 365 * 24 * time.Hour
	minJoinTokenLen = 16
)

// IdentityDecl is the `identity` block: the mesh CA, certificate lifetimes,
// mutual TLS and the join tokens that prove workload identities.
type IdentityDecl struct {
	// MTLS is the mesh-wide mode ("" means DefaultMTLSMode).
	MTLS MTLSMode
	// CertTTL is the lifetime of workload certificates (0 means
	// DefaultCertTTL). They are reissued at half-life.
	CertTTL time.Duration
	// CACertFile and CAKeyFile name an operator-supplied CA (a root or an
	// intermediate); empty means the CA generated in the data directory.
	// CARootFile holds roots to trust: with an operator CA, the roots it
	// chains to (when CACertFile does not end with its root), and any older
	// root being retired; with the generated CA, roots trusted besides its
	// own (the first step of moving to another CA). Read at startup.
	CACertFile string
	CAKeyFile  string
	CARootFile string
	// Services override the mode per service.
	Services []*ServiceMTLSDecl
	// JoinTokens are the tokens that prove workload identities.
	JoinTokens []*JoinTokenDecl
	// Attest turns on the platforms' attestors (identity_attest.go).
	Attest    *AttestDecl
	DeclRange hcl.Range
}

// ServiceMTLSDecl is a `service` block inside `identity`: the mode of one
// service.
type ServiceMTLSDecl struct {
	Name      string
	Namespace string
	MTLS      MTLSMode
	DeclRange hcl.Range
}

// JoinTokenDecl is a `join_token` block: a secret that proves the identity of
// one service's workloads. Either Token or TokenSHA256 (hex) is set.
type JoinTokenDecl struct {
	Service     string
	Namespace   string
	Token       string
	TokenSHA256 string
	DeclRange   hcl.Range
}

// MTLSModeFor returns the mTLS mode of a service: its own override, else the
// mesh-wide mode, else DefaultMTLSMode. A nil Config has the default.
func (c *Config) MTLSModeFor(namespace, name string) MTLSMode {
	if c == nil || c.Identity == nil {
		return DefaultMTLSMode
	}
	for _, s := range c.Identity.Services {
		if s.Name == name && s.Namespace == namespace {
			return s.MTLS
		}
	}
	if c.Identity.MTLS != "" {
		return c.Identity.MTLS
	}
	return DefaultMTLSMode
}

// CertTTL returns the lifetime of workload certificates.
func (c *Config) CertTTL() time.Duration {
	if c == nil || c.Identity == nil || c.Identity.CertTTL == 0 {
		return DefaultCertTTL
	}
	return c.Identity.CertTTL
}

// JoinTokens returns the configured join tokens (none without an identity
// block).
func (c *Config) JoinTokens() []*JoinTokenDecl {
	if c == nil || c.Identity == nil {
		return nil
	}
	return c.Identity.JoinTokens
}

var identitySchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "mtls"}, {Name: "cert_ttl"}, {Name: "ca_cert_file"}, {Name: "ca_key_file"}, {Name: "ca_root_file"},
	},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "service", LabelNames: []string{"name"}},
		{Type: "join_token", LabelNames: []string{"service"}},
		{Type: "attest"},
	},
}

var mtlsModes = []string{string(MTLSStrict), string(MTLSPermissive), string(MTLSDisabled)}

func decodeIdentityBlock(b *hcl.Block) (*IdentityDecl, hcl.Diagnostics) {
	id := &IdentityDecl{DeclRange: b.DefRange}
	content, diags := b.Body.Content(identitySchema)
	if a, ok := content.Attributes["mtls"]; ok {
		var mode string
		diags = append(diags, decodeEnum(a, &mode, mtlsModes...)...)
		id.MTLS = MTLSMode(mode)
	}
	if a, ok := content.Attributes["cert_ttl"]; ok {
		diags = append(diags, decodeCertTTL(a, &id.CertTTL)...)
	}
	for name, dst := range map[string]*string{"ca_cert_file": &id.CACertFile, "ca_key_file": &id.CAKeyFile, "ca_root_file": &id.CARootFile} {
		if a, ok := content.Attributes[name]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, dst)...)
		}
	}
	if (id.CACertFile == "") != (id.CAKeyFile == "") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Incomplete CA",
			Detail: "ca_cert_file and ca_key_file go together: set both or neither.", Subject: b.DefRange.Ptr()})
	}
	services := map[string]hcl.Range{}
	for _, sb := range content.Blocks {
		switch sb.Type {
		case "service":
			s, d := decodeServiceMTLSBlock(sb)
			diags = append(diags, d...)
			key := s.Namespace + "/" + s.Name
			if prev, dup := services[key]; dup {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate service mTLS setting",
					Detail: fmt.Sprintf("The mTLS mode of %s is already set at %s.", key, prev), Subject: sb.DefRange.Ptr()})
				continue
			}
			services[key] = sb.DefRange
			id.Services = append(id.Services, s)
		case "join_token":
			t, d := decodeJoinTokenBlock(sb)
			diags = append(diags, d...)
			id.JoinTokens = append(id.JoinTokens, t)
		case "attest":
			a, d := decodeAttestBlock(sb)
			diags = append(diags, d...)
			if id.Attest != nil {
				diags = append(diags, duplicateBlock("attest", sb, id.Attest.DeclRange))
				continue
			}
			id.Attest = a
		}
	}
	return id, diags
}

func decodeCertTTL(a *hcl.Attribute, dst *time.Duration) hcl.Diagnostics {
	var s string
	diags := gohcl.DecodeExpression(a.Expr, nil, &s)
	if diags.HasErrors() {
		return diags
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < minCertTTL || d > maxCertTTL {
		return append(diags, attrError(a, "Invalid cert_ttl",
			fmt.Sprintf("%q is not a certificate lifetime: use a duration from %s to %s, for example \"24h\".", s, minCertTTL, maxCertTTL)))
	}
	*dst = d
	return diags
}

var serviceMTLSSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "namespace"}, {Name: "mtls", Required: true}},
}

func decodeServiceMTLSBlock(b *hcl.Block) (*ServiceMTLSDecl, hcl.Diagnostics) {
	s := &ServiceMTLSDecl{Name: b.Labels[0], Namespace: "default", DeclRange: b.DefRange}
	var diags hcl.Diagnostics
	if ns, name, ok := strings.Cut(s.Name, "/"); ok {
		s.Namespace, s.Name = ns, name
	}
	if !nameRe.MatchString(s.Name) || !nameRe.MatchString(s.Namespace) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid service name",
			Detail: fmt.Sprintf("%q is not a valid service: use NAME or NAMESPACE/NAME.", b.Labels[0]), Subject: b.LabelRanges[0].Ptr()})
	}
	content, d := b.Body.Content(serviceMTLSSchema)
	diags = append(diags, d...)
	diags = append(diags, decodeName(content.Attributes["namespace"], &s.Namespace)...)
	if a, ok := content.Attributes["mtls"]; ok {
		var mode string
		diags = append(diags, decodeEnum(a, &mode, mtlsModes...)...)
		s.MTLS = MTLSMode(mode)
	}
	return s, diags
}

var joinTokenSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "namespace"}, {Name: "token"}, {Name: "token_sha256"}},
}

var sha256HexRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

func decodeJoinTokenBlock(b *hcl.Block) (*JoinTokenDecl, hcl.Diagnostics) {
	t := &JoinTokenDecl{Service: b.Labels[0], Namespace: "default", DeclRange: b.DefRange}
	var diags hcl.Diagnostics
	if ns, name, ok := strings.Cut(t.Service, "/"); ok {
		t.Namespace, t.Service = ns, name
	}
	if !nameRe.MatchString(t.Service) || !nameRe.MatchString(t.Namespace) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid service name",
			Detail: fmt.Sprintf("%q is not a valid service: use NAME or NAMESPACE/NAME.", b.Labels[0]), Subject: b.LabelRanges[0].Ptr()})
	}
	content, d := b.Body.Content(joinTokenSchema)
	diags = append(diags, d...)
	diags = append(diags, decodeName(content.Attributes["namespace"], &t.Namespace)...)
	if a, ok := content.Attributes["token"]; ok {
		dd := gohcl.DecodeExpression(a.Expr, nil, &t.Token)
		diags = append(diags, dd...)
		if !dd.HasErrors() && len(t.Token) < minJoinTokenLen {
			diags = append(diags, attrError(a, "Join token too short",
				fmt.Sprintf("A join token must have at least %d characters; generate one with `openssl rand -hex 32`.", minJoinTokenLen)))
		}
	}
	if a, ok := content.Attributes["token_sha256"]; ok {
		dd := gohcl.DecodeExpression(a.Expr, nil, &t.TokenSHA256)
		diags = append(diags, dd...)
		t.TokenSHA256 = strings.ToLower(t.TokenSHA256)
		if !dd.HasErrors() && !sha256HexRe.MatchString(t.TokenSHA256) {
			diags = append(diags, attrError(a, "Invalid token_sha256", "token_sha256 is the SHA-256 of the token as 64 hexadecimal digits."))
		}
	}
	if (t.Token == "") == (t.TokenSHA256 == "") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Join token needs one secret",
			Detail: "Set exactly one of token and token_sha256.", Subject: b.DefRange.Ptr()})
	}
	return t, diags
}
