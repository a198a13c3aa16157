package config

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// JWTDecl is a `jwt "<service>"` block: end users calling the service
// present a JSON Web Token from this issuer. A service may have several
// (several issuers): a request needs a valid token from one of them.
// Requests without one, or with an invalid one, are refused with 401.
type JWTDecl struct {
	Service   ServiceRef
	Issuer    string
	Audiences []string
	// JWKS is the issuer's key set (JSON), written inline or read from
	// JWKSFile when the configuration is loaded; JWKSURI fetches it over
	// HTTPS instead (every CacheDuration).
	JWKS          string
	JWKSFile      string
	JWKSURI       string
	CacheDuration time.Duration
	// FromHeaders and FromParams say where the token is; none means Envoy's
	// default: "Authorization: Bearer <token>", or the access_token query
	// parameter.
	FromHeaders []JWTHeader
	FromParams  []string
	// Forward keeps the token in the request sent to the service.
	Forward bool
	// ID names the provider: "<namespace>/<service>/<index>".
	ID        string
	DeclRange hcl.Range
}

// JWTHeader is a `from_header "<name>"` block.
type JWTHeader struct {
	Name   string
	Prefix string
}

// DefaultJWKSCacheDuration is how long a fetched key set is used.
const DefaultJWKSCacheDuration = 5 * time.Minute

// TokenSources returns where to look for the token, Envoy's defaults when
// the block names none.
func (j *JWTDecl) TokenSources() ([]JWTHeader, []string) {
	if len(j.FromHeaders) == 0 && len(j.FromParams) == 0 {
		return []JWTHeader{{Name: "authorization", Prefix: "Bearer "}}, []string{"access_token"}
	}
	return j.FromHeaders, j.FromParams
}

// JWTFor returns the jwt blocks of a service.
func (c *Config) JWTFor(svc ServiceRef) []*JWTDecl {
	if c == nil || c.Authz == nil {
		return nil
	}
	return c.Authz.JWT[svc]
}

var jwtSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "namespace"}, {Name: "issuer", Required: true}, {Name: "audiences"},
		{Name: "jwks"}, {Name: "jwks_file"}, {Name: "jwks_uri"}, {Name: "cache_duration"},
		{Name: "from_params"}, {Name: "forward"},
	},
	Blocks: []hcl.BlockHeaderSchema{{Type: "from_header", LabelNames: []string{"name"}}},
}

var jwtHeaderSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "prefix"}}}

func decodeJWTBlock(b *hcl.Block) (*JWTDecl, hcl.Diagnostics) {
	j := &JWTDecl{Service: ServiceRef{Namespace: "default", Name: b.Labels[0]}, CacheDuration: DefaultJWKSCacheDuration, DeclRange: b.DefRange}
	content, diags := b.Body.Content(jwtSchema)
	diags = append(diags, checkName(b.Labels[0], b.LabelRanges[0], "service")...)
	diags = append(diags, decodeName(content.Attributes["namespace"], &j.Service.Namespace)...)
	for name, dst := range map[string]*string{"issuer": &j.Issuer, "jwks": &j.JWKS, "jwks_file": &j.JWKSFile, "jwks_uri": &j.JWKSURI} {
		if a, ok := content.Attributes[name]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, dst)...)
		}
	}
	diags = append(diags, decodeStringList(content.Attributes["audiences"], &j.Audiences)...)
	diags = append(diags, decodeStringList(content.Attributes["from_params"], &j.FromParams)...)
	diags = append(diags, decodeDuration(content.Attributes["cache_duration"], &j.CacheDuration, time.Second, 24*time.Hour)...)
	if a, ok := content.Attributes["forward"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &j.Forward)...)
	}
	for _, hb := range content.Blocks {
		h := JWTHeader{Name: strings.ToLower(hb.Labels[0])}
		hc, d := hb.Body.Content(jwtHeaderSchema)
		diags = append(diags, d...)
		if a, ok := hc.Attributes["prefix"]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &h.Prefix)...)
		}
		j.FromHeaders = append(j.FromHeaders, h)
	}
	if diags.HasErrors() {
		return j, diags
	}
	sources := 0
	for _, s := range []string{j.JWKS, j.JWKSFile, j.JWKSURI} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Where are the keys?",
			Detail: "A jwt block sets exactly one of jwks (the key set, inline), jwks_file (a file holding it) and jwks_uri (an https:// URL serving it).", Subject: b.DefRange.Ptr()})
		return j, diags
	}
	if a := content.Attributes["jwks_file"]; a != nil {
		path := j.JWKSFile
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(b.DefRange.Filename), path)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return j, append(diags, attrError(a, "Cannot read the key set", fmt.Sprintf("%v.", err)))
		}
		j.JWKS = string(data)
	}
	if a := content.Attributes["jwks_uri"]; a != nil {
		if u, err := url.Parse(j.JWKSURI); err != nil || u.Scheme != "https" || u.Host == "" {
			diags = append(diags, attrError(a, "Invalid jwks_uri", fmt.Sprintf("%q is not an https:// URL.", j.JWKSURI)))
		}
	}
	if j.JWKS != "" {
		rng := b.DefRange
		if a := content.Attributes["jwks"]; a != nil {
			rng = a.Expr.Range()
		} else if a := content.Attributes["jwks_file"]; a != nil {
			rng = a.Expr.Range()
		}
		if why := checkJWKS(j.JWKS); why != "" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid key set", Detail: why, Subject: rng.Ptr()})
		}
	}
	return j, diags
}

// checkJWKS checks the shape of a JSON Web Key Set (RFC 7517): a keys list,
// each with a kty. The keys themselves are parsed by their users.
func checkJWKS(s string) string {
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal([]byte(s), &set); err != nil {
		return fmt.Sprintf("The key set is not JSON: %v.", err)
	}
	if len(set.Keys) == 0 {
		return "The key set has no keys: it is {\"keys\": [...]} (RFC 7517)."
	}
	for i, k := range set.Keys {
		if _, ok := k["kty"].(string); !ok {
			return fmt.Sprintf("Key %d has no kty.", i)
		}
	}
	return ""
}
