package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
)

// fragment is what one file contributes.
type fragment struct {
	mesh     *Mesh
	services []*ServiceDecl
	consul   *ConsulDecl
	nomad    *NomadDecl
	k8s      *KubernetesDecl
	defaults []*ServiceDefaults
	subsets  []*Subset
	routes   []*Route
	identity *IdentityDecl
	authz    []*Authorization
	jwt      []*JWTDecl
	tel      *TelemetryDecl // the telemetry block (telemetry.go)
	rlimits  []*RateLimit   // rate_limit blocks (ratelimit_decode.go)
}

// hasRules reports whether the file declares anything besides services:
// what the proxies' configuration is translated from, beyond the catalog.
func (f *fragment) hasRules() bool {
	return f.mesh != nil || f.consul != nil || f.nomad != nil || f.k8s != nil || len(f.defaults) > 0 || len(f.subsets) > 0 ||
		len(f.routes) > 0 || f.identity != nil || len(f.authz) > 0 || len(f.jwt) > 0 || f.tel != nil || len(f.rlimits) > 0
}

var fileSchema = &hcl.BodySchema{
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "mesh"},
		{Type: "service", LabelNames: []string{"name"}},
		{Type: "consul"},
		{Type: "nomad"},
		{Type: "kubernetes"},
		{Type: "service_defaults", LabelNames: []string{"service"}},
		{Type: "subset", LabelNames: []string{"service", "name"}},
		{Type: "route", LabelNames: []string{"service"}},
		{Type: "identity"},
		{Type: "authorization", LabelNames: []string{"service"}},
		{Type: "jwt", LabelNames: []string{"service"}},
		{Type: "telemetry"},
		{Type: "rate_limit", LabelNames: []string{"service"}},
	},
}

// parseFile parses one file as native HCL, or as HCL's JSON syntax when its
// name ends in .json.
func parseFile(p *hclparse.Parser, name string, src []byte) (*hcl.File, hcl.Diagnostics) {
	if strings.HasSuffix(name, ".json") {
		return p.ParseJSON(src, name)
	}
	return parseNative(src, name) // oneline.go: one-line blocks may hold several arguments
}

func decodeFile(f *hcl.File) (*fragment, hcl.Diagnostics) {
	content, diags := f.Body.Content(fileSchema)
	frag := &fragment{}
	for _, b := range content.Blocks {
		switch b.Type {
		case "mesh":
			m, d := decodeMeshBlock(b)
			diags = append(diags, d...)
			if frag.mesh != nil {
				diags = append(diags, duplicateBlock("mesh", b, frag.mesh.DeclRange))
				continue
			}
			frag.mesh = m
		case "service":
			s, d := decodeServiceBlock(b)
			diags = append(diags, d...)
			if s != nil {
				frag.services = append(frag.services, s)
			}
		case "consul":
			c, d := decodeConsulBlock(b)
			diags = append(diags, d...)
			if frag.consul != nil {
				diags = append(diags, duplicateBlock("consul", b, frag.consul.DeclRange))
				continue
			}
			frag.consul = c
		case "nomad":
			n, d := decodeNomadBlock(b)
			diags = append(diags, d...)
			if frag.nomad != nil {
				diags = append(diags, duplicateBlock("nomad", b, frag.nomad.DeclRange))
				continue
			}
			frag.nomad = n
		case "kubernetes":
			k, d := decodeKubernetesBlock(b)
			diags = append(diags, d...)
			if frag.k8s != nil {
				diags = append(diags, duplicateBlock("kubernetes", b, frag.k8s.DeclRange))
				continue
			}
			frag.k8s = k
		case "service_defaults":
			d, ds := decodeServiceDefaultsBlock(b)
			diags = append(diags, ds...)
			frag.defaults = append(frag.defaults, d)
		case "subset":
			sub, ds := decodeSubsetBlock(b)
			diags = append(diags, ds...)
			frag.subsets = append(frag.subsets, sub)
		case "route":
			r, ds := decodeRouteBlock(b)
			diags = append(diags, ds...)
			frag.routes = append(frag.routes, r)
		case "identity":
			id, ds := decodeIdentityBlock(b)
			diags = append(diags, ds...)
			if frag.identity != nil {
				diags = append(diags, duplicateBlock("identity", b, frag.identity.DeclRange))
				continue
			}
			frag.identity = id
		case "authorization":
			a, ds := decodeAuthorizationBlock(b)
			diags = append(diags, ds...)
			frag.authz = append(frag.authz, a)
		case "jwt":
			j, ds := decodeJWTBlock(b) // jwt.go
			diags = append(diags, ds...)
			frag.jwt = append(frag.jwt, j)
		case "telemetry":
			t, ds := decodeTelemetryBlock(b) // telemetry.go
			diags = append(diags, ds...)
			if frag.tel != nil {
				diags = append(diags, duplicateBlock("telemetry", b, frag.tel.DeclRange))
				continue
			}
			frag.tel = t
		case "rate_limit":
			rl, ds := decodeRateLimitBlock(b) // ratelimit_decode.go
			diags = append(diags, ds...)
			frag.rlimits = append(frag.rlimits, rl)
		}
	}
	return frag, diags
}

func duplicateBlock(kind string, b *hcl.Block, prev hcl.Range) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  fmt.Sprintf("Duplicate %s block", kind),
		Detail:   fmt.Sprintf("Only one %s block is allowed; another was declared at %s.", kind, prev),
		Subject:  b.DefRange.Ptr(),
	}
}

var meshSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "trust_domain"}, {Name: "default_deny"}, {Name: "enforce"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "policyd"}},
}

var trustDomainRe = regexp.MustCompile(`^[a-z0-9._-]+$`)

func decodeMeshBlock(b *hcl.Block) (*Mesh, hcl.Diagnostics) {
	content, diags := b.Body.Content(meshSchema)
	m := &Mesh{DeclRange: b.DefRange}
	if a, ok := content.Attributes["trust_domain"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &m.TrustDomain)...)
		if !diags.HasErrors() && !trustDomainRe.MatchString(m.TrustDomain) {
			diags = append(diags, attrError(a, "Invalid trust domain", "A trust domain is made of lower-case letters, digits, dots, dashes and underscores, for example \"mesh.example.com\"."))
		}
	}
	diags = append(diags, decodeMeshPolicy(content, m)...) // authz_decode.go
	return m, diags
}

var serviceSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "namespace"}, {Name: "protocol"}, {Name: "labels"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "endpoint"}, {Type: "upstream", LabelNames: []string{"service"}}},
}

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9_.-]*[a-zA-Z0-9])?$`)

func decodeServiceBlock(b *hcl.Block) (*ServiceDecl, hcl.Diagnostics) {
	s := &ServiceDecl{Name: b.Labels[0], Namespace: "default", Protocol: "tcp", DeclRange: b.DefRange}
	var diags hcl.Diagnostics
	if !nameRe.MatchString(s.Name) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid service name",
			Detail: fmt.Sprintf("%q is not a valid service name: use letters, digits, '-', '_' and '.'.", s.Name), Subject: b.LabelRanges[0].Ptr()})
	}
	content, d := b.Body.Content(serviceSchema)
	diags = append(diags, d...)
	diags = append(diags, decodeName(content.Attributes["namespace"], &s.Namespace)...)
	if a, ok := content.Attributes["protocol"]; ok {
		diags = append(diags, decodeEnum(a, &s.Protocol, "http", "http2", "grpc", "tcp")...)
	}
	diags = append(diags, decodeLabels(content.Attributes["labels"], &s.Labels)...)
	for _, eb := range content.Blocks {
		switch eb.Type {
		case "endpoint":
			e, d := decodeEndpointBlock(eb)
			diags = append(diags, d...)
			s.Endpoints = append(s.Endpoints, e)
		case "upstream":
			u, d := decodeUpstreamBlock(eb)
			diags = append(diags, d...)
			s.Upstreams = append(s.Upstreams, u)
		}
	}
	seen := map[string]hcl.Range{}
	for _, e := range s.Endpoints {
		k := fmt.Sprintf("%s:%d", e.Address, e.Port)
		if prev, dup := seen[k]; dup && e.Address != "" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate endpoint",
				Detail: fmt.Sprintf("Endpoint %s is already declared at %s.", k, prev), Subject: e.DeclRange.Ptr()})
		}
		seen[k] = e.DeclRange
	}
	return s, diags
}

var endpointSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "address", Required: true}, {Name: "port", Required: true}, {Name: "labels"},
		{Name: "health"}, {Name: "sidecar_port"}, {Name: "region"}, {Name: "zone"}, {Name: "weight"},
	},
}

func decodeEndpointBlock(b *hcl.Block) (*EndpointDecl, hcl.Diagnostics) {
	e := &EndpointDecl{DeclRange: b.DefRange}
	content, diags := b.Body.Content(endpointSchema)
	if a, ok := content.Attributes["address"]; ok {
		d := gohcl.DecodeExpression(a.Expr, nil, &e.Address)
		diags = append(diags, d...)
		if !d.HasErrors() {
			if _, err := netip.ParseAddr(e.Address); err != nil && !hostnameRe.MatchString(e.Address) {
				diags = append(diags, attrError(a, "Invalid address", fmt.Sprintf("%q is neither an IP address nor a host name.", e.Address)))
			}
		}
	}
	diags = append(diags, decodePort(content.Attributes["port"], &e.Port, false)...)
	diags = append(diags, decodePort(content.Attributes["sidecar_port"], &e.SidecarPort, true)...)
	diags = append(diags, decodeLabels(content.Attributes["labels"], &e.Labels)...)
	if a, ok := content.Attributes["health"]; ok {
		diags = append(diags, decodeEnum(a, &e.Health, "healthy", "degraded", "unhealthy")...)
	}
	for name, dst := range map[string]*string{"region": &e.Region, "zone": &e.Zone} {
		if a, ok := content.Attributes[name]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, dst)...)
		}
	}
	if a, ok := content.Attributes["weight"]; ok {
		var w int64
		d := gohcl.DecodeExpression(a.Expr, nil, &w)
		diags = append(diags, d...)
		if !d.HasErrors() {
			if w < 1 || w > 128 {
				diags = append(diags, attrError(a, "Invalid weight", "An endpoint weight is a whole number from 1 to 128."))
			}
			e.Weight = uint32(w)
		}
	}
	return e, diags
}

var hostnameRe = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?$`)

var upstreamSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "namespace"}, {Name: "local_port", Required: true}},
}

func decodeUpstreamBlock(b *hcl.Block) (*UpstreamDecl, hcl.Diagnostics) {
	u := &UpstreamDecl{Name: b.Labels[0], DeclRange: b.DefRange}
	content, diags := b.Body.Content(upstreamSchema)
	if ns, name, ok := strings.Cut(u.Name, "/"); ok {
		u.Namespace, u.Name = ns, name
	}
	diags = append(diags, decodeName(content.Attributes["namespace"], &u.Namespace)...)
	diags = append(diags, decodePort(content.Attributes["local_port"], &u.LocalPort, false)...)
	return u, diags
}

var consulSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "address"}, {Name: "token"}, {Name: "datacenter"}, {Name: "kv_prefix"}, {Name: "max_conns"}, {Name: "intentions"}},
}

func decodeConsulBlock(b *hcl.Block) (*ConsulDecl, hcl.Diagnostics) {
	c := &ConsulDecl{Address: "127.0.0.1:8500", DeclRange: b.DefRange}
	content, diags := b.Body.Content(consulSchema)
	for name, dst := range map[string]*string{"address": &c.Address, "token": &c.Token, "datacenter": &c.Datacenter, "kv_prefix": &c.KVPrefix} {
		if a, ok := content.Attributes[name]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, dst)...)
		}
	}
	if a, ok := content.Attributes["intentions"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &c.Intentions)...)
	}
	if a, ok := content.Attributes["max_conns"]; ok {
		d := gohcl.DecodeExpression(a.Expr, nil, &c.MaxConns)
		diags = append(diags, d...)
		if !d.HasErrors() && (c.MaxConns < -1 || c.MaxConns == 1) {
			diags = append(diags, attrError(a, "Invalid max_conns",
				"max_conns is 0 (the default: three quarters of the agent's http_max_conns_per_client), -1 (no bound: over HTTPS) or at least 2 (one connection for the catalog, one for services)."))
		}
	}
	return c, diags
}

// decodeName decodes an optional namespace-like attribute into dst.
func decodeName(a *hcl.Attribute, dst *string) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	var v string
	diags := gohcl.DecodeExpression(a.Expr, nil, &v)
	if diags.HasErrors() {
		return diags
	}
	if !nameRe.MatchString(v) {
		return append(diags, attrError(a, "Invalid name", fmt.Sprintf("%q is not a valid %s: use letters, digits, '-', '_' and '.'.", v, a.Name)))
	}
	*dst = v
	return diags
}

func decodeEnum(a *hcl.Attribute, dst *string, allowed ...string) hcl.Diagnostics {
	var v string
	diags := gohcl.DecodeExpression(a.Expr, nil, &v)
	if diags.HasErrors() {
		return diags
	}
	for _, ok := range allowed {
		if v == ok {
			*dst = v
			return diags
		}
	}
	return append(diags, attrError(a, fmt.Sprintf("Invalid %s", a.Name),
		fmt.Sprintf("%q is not a valid %s; use one of %s.", v, a.Name, strings.Join(quoteAll(allowed), ", "))))
}

func quoteAll(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = fmt.Sprintf("%q", v)
	}
	return out
}

func decodePort(a *hcl.Attribute, dst *uint32, zeroOK bool) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	var v int64
	diags := gohcl.DecodeExpression(a.Expr, nil, &v)
	if diags.HasErrors() {
		return diags
	}
	if v < 1 || v > 65535 {
		if !(zeroOK && v == 0) {
			return append(diags, attrError(a, "Invalid port", fmt.Sprintf("%d is not a port: %s must be from 1 to 65535.", v, a.Name)))
		}
	}
	*dst = uint32(v)
	return diags
}

func decodeLabels(a *hcl.Attribute, dst *map[string]string) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	val, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		return diags
	}
	if val.IsNull() {
		return diags
	}
	ty := val.Type()
	if !ty.IsObjectType() && !ty.IsMapType() {
		return append(diags, attrError(a, "Invalid labels", "labels must be a map of strings, for example { version = \"v1\" }."))
	}
	out := map[string]string{}
	for it := val.ElementIterator(); it.Next(); {
		k, v := it.Element()
		if v.IsNull() || !v.IsKnown() || (v.Type() != cty.String && v.Type() != cty.Number && v.Type() != cty.Bool) {
			return append(diags, attrError(a, "Invalid labels", fmt.Sprintf("label %q must be a string.", k.AsString())))
		}
		var s string
		if err := gohcl.DecodeExpression(&literalExpr{v, a.Expr.Range()}, nil, &s); err.HasErrors() {
			return append(diags, err...)
		}
		out[k.AsString()] = s
	}
	*dst = out
	return diags
}

// literalExpr wraps a value so that gohcl can convert it with its usual rules.
type literalExpr struct {
	v cty.Value
	r hcl.Range
}

func (e *literalExpr) Value(*hcl.EvalContext) (cty.Value, hcl.Diagnostics) { return e.v, nil }
func (e *literalExpr) Variables() []hcl.Traversal                          { return nil }
func (e *literalExpr) Range() hcl.Range                                    { return e.r }
func (e *literalExpr) StartRange() hcl.Range                               { return e.r }

func attrError(a *hcl.Attribute, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: a.Expr.Range().Ptr(), Context: a.Range.Ptr()}
}
