package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// The decoders of the authorization language: the authorization block and
// the policy settings of the mesh block (default_deny, enforce, policyd).
// docs/policy.md is the reference.

var enforceValues = []string{string(EnforceProxy), string(EnforcePolicyd), string(EnforceBoth)}

// decodeMeshPolicy reads the mesh block's policy settings.
func decodeMeshPolicy(content *hcl.BodyContent, m *Mesh) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if a, ok := content.Attributes["default_deny"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &m.DefaultDeny)...)
	}
	if a, ok := content.Attributes["enforce"]; ok {
		var e string
		diags = append(diags, decodeEnum(a, &e, enforceValues...)...)
		m.Enforce = Enforce(e)
	}
	for _, b := range content.Blocks {
		if b.Type != "policyd" {
			continue
		}
		if m.Policyd != nil {
			diags = append(diags, duplicateBlock("policyd", b, m.Policyd.DeclRange))
			continue
		}
		p, d := decodePolicydBlock(b)
		diags = append(diags, d...)
		m.Policyd = p
	}
	return diags
}

var policydSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "address"}, {Name: "service"}, {Name: "namespace"}, {Name: "timeout"}},
}

func decodePolicydBlock(b *hcl.Block) (*PolicydDecl, hcl.Diagnostics) {
	p := &PolicydDecl{Timeout: DefaultPolicydTimeout, DeclRange: b.DefRange}
	content, diags := b.Body.Content(policydSchema)
	if a, ok := content.Attributes["address"]; ok {
		d := gohcl.DecodeExpression(a.Expr, nil, &p.Address)
		diags = append(diags, d...)
		if !d.HasErrors() {
			diags = append(diags, checkHostPort(a, p.Address)...)
		}
	}
	if a, ok := content.Attributes["service"]; ok {
		var s string
		d := gohcl.DecodeExpression(a.Expr, nil, &s)
		diags = append(diags, d...)
		if !d.HasErrors() {
			ref, ok := parseServiceRef(s, "default")
			if !ok {
				diags = append(diags, attrError(a, "Invalid service", fmt.Sprintf("%q is not \"name\" or \"namespace/name\".", s)))
			}
			if na, ok := content.Attributes["namespace"]; ok && !strings.Contains(s, "/") {
				diags = append(diags, decodeName(na, &ref.Namespace)...)
			}
			p.Service = &ref
		}
	}
	diags = append(diags, decodeDuration(content.Attributes["timeout"], &p.Timeout, time.Millisecond, time.Minute)...)
	if (p.Address == "") == (p.Service == nil) && !diags.HasErrors() {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Where is policyd?",
			Detail: "A policyd block sets exactly one of address (\"host:port\" of its gRPC port) and service (a mesh service whose endpoints are its gRPC ports).", Subject: b.DefRange.Ptr()})
	}
	return p, diags
}

var hostPortRe = regexp.MustCompile(`^(\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?):([0-9]{1,5})$`)

func checkHostPort(a *hcl.Attribute, s string) hcl.Diagnostics {
	m := hostPortRe.FindStringSubmatch(s)
	if m == nil {
		return hcl.Diagnostics{attrError(a, "Invalid address", fmt.Sprintf("%q is not host:port.", s))}
	}
	var port int
	fmt.Sscan(m[3], &port)
	if port < 1 || port > 65535 {
		return hcl.Diagnostics{attrError(a, "Invalid address", fmt.Sprintf("%q: the port must be from 1 to 65535.", s))}
	}
	return nil
}

// parseServiceRef reads "name" (in namespace ns) or "namespace/name".
func parseServiceRef(s, ns string) (ServiceRef, bool) {
	ref := ServiceRef{Namespace: ns, Name: s}
	if n, name, ok := strings.Cut(s, "/"); ok {
		ref = ServiceRef{Namespace: n, Name: name}
	}
	return ref, nameRe.MatchString(ref.Name) && nameRe.MatchString(ref.Namespace)
}

var authorizationSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "namespace"}, {Name: "enforce"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "rule"}},
}

func decodeAuthorizationBlock(b *hcl.Block) (*Authorization, hcl.Diagnostics) {
	az := &Authorization{Service: ServiceRef{Namespace: "default", Name: b.Labels[0]}, DeclRange: b.DefRange}
	content, diags := b.Body.Content(authorizationSchema)
	diags = append(diags, checkName(b.Labels[0], b.LabelRanges[0], "service")...)
	diags = append(diags, decodeName(content.Attributes["namespace"], &az.Service.Namespace)...)
	if a, ok := content.Attributes["enforce"]; ok {
		var e string
		diags = append(diags, decodeEnum(a, &e, enforceValues...)...)
		az.Enforce, az.EnforceRange = Enforce(e), a.Expr.Range()
	}
	for _, rb := range content.Blocks {
		r, d := decodeAuthzRuleBlock(rb, az.Service.Namespace)
		diags = append(diags, d...)
		az.Rules = append(az.Rules, r)
	}
	if len(az.Rules) == 0 && az.Enforce == "" {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Authorization without rules",
			Detail: "This block has no rule and sets no enforce: it changes nothing.", Subject: b.DefRange.Ptr()})
	}
	return az, diags
}

var authzRuleSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "action", Required: true}, {Name: "mode"}, {Name: "audit"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "from"}, {Type: "to"}, {Type: "when"}},
}

func decodeAuthzRuleBlock(b *hcl.Block, ns string) (*AuthzRule, hcl.Diagnostics) {
	r := &AuthzRule{DeclRange: b.DefRange}
	content, diags := b.Body.Content(authzRuleSchema)
	if a, ok := content.Attributes["action"]; ok {
		var act string
		diags = append(diags, decodeEnum(a, &act, string(AuthzAllow), string(AuthzDeny))...)
		r.Action = AuthzAction(act)
	}
	if a, ok := content.Attributes["mode"]; ok {
		var mode string
		diags = append(diags, decodeEnum(a, &mode, "enforce", "dry-run")...)
		r.DryRun = mode == "dry-run"
	}
	if a, ok := content.Attributes["audit"]; ok { // telemetry: audit allowed requests
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &r.Audit)...)
	}
	for _, blk := range content.Blocks {
		switch blk.Type {
		case "from":
			s, d := decodeAuthzSourceBlock(blk, ns)
			diags = append(diags, d...)
			r.From = append(r.From, s)
		case "to":
			o, d := decodeAuthzOperationBlock(blk)
			diags = append(diags, d...)
			r.To = append(r.To, o)
		case "when":
			c, d := decodeAuthzConditionBlock(blk)
			diags = append(diags, d...)
			r.When = append(r.When, c)
		}
	}
	if len(r.From) == 0 && len(r.To) == 0 && len(r.When) == 0 {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Empty rule",
			Detail: "This rule has no from, to or when block, so it would apply to every request, which is rarely meant. " +
				"Say whom or what it is about; to match every authenticated caller on purpose write from { principals = [\"*\"] }, " +
				"and every HTTP request to { paths = [\"*\"] }.",
			Subject: b.DefRange.Ptr()})
	}
	return r, diags
}

var authzSourceSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "principals"}, {Name: "not_principals"}, {Name: "services"}, {Name: "not_services"},
		{Name: "namespaces"}, {Name: "not_namespaces"},
	},
}

func decodeAuthzSourceBlock(b *hcl.Block, ns string) (*AuthzSource, hcl.Diagnostics) {
	s := &AuthzSource{DeclRange: b.DefRange}
	content, diags := b.Body.Content(authzSourceSchema)
	if len(content.Attributes) == 0 {
		diags = append(diags, emptyBlock(b, "principals, services, namespaces or their not_ forms"))
	}
	for name, dst := range map[string]*[]string{"principals": &s.Principals, "not_principals": &s.NotPrincipals} {
		diags = append(diags, decodePatterns(content.Attributes[name], dst, checkPrincipal)...)
	}
	for name, dst := range map[string]*[]string{"namespaces": &s.Namespaces, "not_namespaces": &s.NotNamespaces} {
		diags = append(diags, decodePatterns(content.Attributes[name], dst, checkNamespacePattern)...)
	}
	for name, dst := range map[string]*[]ServiceRef{"services": &s.Services, "not_services": &s.NotServices} {
		a := content.Attributes[name]
		var names []string
		d := decodeStringList(a, &names)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		for _, n := range names {
			ref, ok := parseServiceRef(n, ns)
			if !ok {
				diags = append(diags, attrError(a, "Invalid service", fmt.Sprintf("%q is not \"name\" (a service in namespace %s) or \"namespace/name\"; services take no wildcards (use namespaces or principals).", n, ns)))
				continue
			}
			*dst = append(*dst, ref)
		}
	}
	return s, diags
}

var authzOperationSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "methods"}, {Name: "not_methods"}, {Name: "paths"}, {Name: "not_paths"},
		{Name: "ports"}, {Name: "not_ports"}, {Name: "hosts"}, {Name: "not_hosts"},
	},
}

func decodeAuthzOperationBlock(b *hcl.Block) (*AuthzOperation, hcl.Diagnostics) {
	o := &AuthzOperation{DeclRange: b.DefRange}
	content, diags := b.Body.Content(authzOperationSchema)
	if len(content.Attributes) == 0 {
		diags = append(diags, emptyBlock(b, "methods, paths, ports, hosts or their not_ forms"))
	}
	for name, dst := range map[string]*[]string{"methods": &o.Methods, "not_methods": &o.NotMethods} {
		diags = append(diags, decodePatterns(content.Attributes[name], dst, checkMethod)...)
		for i, m := range *dst {
			(*dst)[i] = strings.ToUpper(m)
		}
	}
	for name, dst := range map[string]*[]string{"paths": &o.Paths, "not_paths": &o.NotPaths} {
		diags = append(diags, decodePatterns(content.Attributes[name], dst, checkPathPattern)...)
	}
	for name, dst := range map[string]*[]string{"hosts": &o.Hosts, "not_hosts": &o.NotHosts} {
		diags = append(diags, decodePatterns(content.Attributes[name], dst, checkWildcards)...)
		for i, h := range *dst {
			(*dst)[i] = strings.ToLower(h)
		}
	}
	for name, dst := range map[string]*[]uint32{"ports": &o.Ports, "not_ports": &o.NotPorts} {
		a := content.Attributes[name]
		if a == nil {
			continue
		}
		var ports []int64
		d := gohcl.DecodeExpression(a.Expr, nil, &ports)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		if len(ports) == 0 {
			diags = append(diags, emptyList(a))
		}
		for _, p := range ports {
			if p < 1 || p > 65535 {
				diags = append(diags, attrError(a, "Invalid port", fmt.Sprintf("%d is not a port: ports are from 1 to 65535.", p)))
				continue
			}
			*dst = append(*dst, uint32(p))
		}
	}
	return o, diags
}

var authzConditionSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "key", Required: true}, {Name: "values"}, {Name: "not_values"}, {Name: "regex"}, {Name: "present"}},
}

// conditionKeyRe reads request.headers[name] and request.auth.claims[a][b]
// (brackets with or without quotes).
var (
	conditionKeyRe = regexp.MustCompile(`^request\.(headers|auth\.claims)((?:\[(?:"[^"\[\]]+"|[^"\[\]]+)\])+)$`)
	bracketRe      = regexp.MustCompile(`\[("[^"\[\]]+"|[^"\[\]]+)\]`)
)

func decodeAuthzConditionBlock(b *hcl.Block) (*AuthzCondition, hcl.Diagnostics) {
	c := &AuthzCondition{DeclRange: b.DefRange}
	content, diags := b.Body.Content(authzConditionSchema)
	if a, ok := content.Attributes["key"]; ok {
		d := gohcl.DecodeExpression(a.Expr, nil, &c.Key)
		diags = append(diags, d...)
		if !d.HasErrors() {
			diags = append(diags, parseConditionKey(a, c)...)
		}
	}
	diags = append(diags, decodePatterns(content.Attributes["values"], &c.Values, checkWildcards)...)
	diags = append(diags, decodePatterns(content.Attributes["not_values"], &c.NotValues, checkWildcards)...)
	diags = append(diags, decodeRegex(content.Attributes["regex"], &c.Regex)...)
	if a, ok := content.Attributes["present"]; ok {
		var p bool
		d := gohcl.DecodeExpression(a.Expr, nil, &p)
		diags = append(diags, d...)
		c.Present = &p
	}
	if c.Values == nil && c.NotValues == nil && c.Regex == "" && c.Present == nil && !diags.HasErrors() {
		diags = append(diags, emptyBlock(b, "values, not_values, regex or present beside its key"))
	}
	if c.Present != nil && !*c.Present && (c.Values != nil || c.Regex != "") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Condition can never hold",
			Detail: "present = false asks for the attribute to be missing, so values or regex can never match it.", Subject: b.DefRange.Ptr()})
	}
	return c, diags
}

func parseConditionKey(a *hcl.Attribute, c *AuthzCondition) hcl.Diagnostics {
	m := conditionKeyRe.FindStringSubmatch(c.Key)
	if m == nil {
		return hcl.Diagnostics{attrError(a, "Invalid condition key",
			fmt.Sprintf("%q is not a condition key; use request.headers[NAME] or request.auth.claims[NAME].", c.Key))}
	}
	var parts []string
	for _, p := range bracketRe.FindAllStringSubmatch(m[2], -1) {
		parts = append(parts, strings.Trim(p[1], `"`))
	}
	if m[1] == "auth.claims" {
		c.Kind, c.ClaimPath, c.Name = ConditionClaim, parts, strings.Join(parts, ".")
		return nil
	}
	if len(parts) != 1 {
		return hcl.Diagnostics{attrError(a, "Invalid condition key", fmt.Sprintf("%q: a header key names one header, request.headers[NAME].", c.Key))}
	}
	c.Kind, c.Name = ConditionHeader, strings.ToLower(parts[0])
	if c.Name == "host" { // Envoy and gRPC both know the host as :authority
		c.Name = ":authority"
	}
	// Proxyless gRPC servers reject (NACK) RBAC that looks at these (gRFC A41):
	// they are refused everywhere so that a rule means the same on every proxy.
	if c.Name == ":scheme" || strings.HasPrefix(c.Name, "grpc-") {
		return hcl.Diagnostics{attrError(a, "Header not allowed",
			fmt.Sprintf("%q cannot be used in authorization: gRPC servers reject rules on :scheme and on grpc- headers.", parts[0]))}
	}
	return nil
}

func emptyBlock(b *hcl.Block, what string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: fmt.Sprintf("Empty %s block", b.Type),
		Detail: fmt.Sprintf("A %s block needs %s.", b.Type, what), Subject: b.DefRange.Ptr()}
}

func emptyList(a *hcl.Attribute) *hcl.Diagnostic {
	return attrError(a, "Empty list", fmt.Sprintf("An empty %s matches nothing; leave the attribute out instead.", a.Name))
}

func decodeStringList(a *hcl.Attribute, dst *[]string) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	var v []string
	diags := gohcl.DecodeExpression(a.Expr, nil, &v)
	if diags.HasErrors() {
		return diags
	}
	if len(v) == 0 {
		return append(diags, emptyList(a))
	}
	*dst = v
	return diags
}

// decodePatterns reads a list of match patterns, each checked by check
// (which returns why the pattern can never match, or "").
func decodePatterns(a *hcl.Attribute, dst *[]string, check func(string) string) hcl.Diagnostics {
	var v []string
	diags := decodeStringList(a, &v)
	if diags.HasErrors() || v == nil {
		return diags
	}
	for _, p := range v {
		if why := check(p); why != "" {
			diags = append(diags, attrError(a, "Pattern can never match", fmt.Sprintf("%q in %s: %s", p, a.Name, why)))
		}
	}
	*dst = v
	return diags
}

// checkWildcards allows exact values, "prefix*", "*suffix" and "*".
func checkWildcards(p string) string {
	switch {
	case p == "":
		return "an empty value matches nothing."
	case p == "*":
		return ""
	case strings.Count(p, "*") > 1 || strings.Contains(strings.Trim(p, "*"), "*"):
		return "a * may only start or end a pattern (\"prefix*\", \"*suffix\"), once."
	}
	return ""
}

func checkPrincipal(p string) string {
	if why := checkWildcards(p); why != "" {
		return why
	}
	if p == "*" || strings.HasPrefix(p, "*") {
		return ""
	}
	if !strings.HasPrefix(p, "spiffe://") {
		return "principals are SPIFFE IDs, spiffe://<trust domain>/ns/<namespace>/svc/<service> (or /sa/<service account>)."
	}
	return ""
}

func checkNamespacePattern(p string) string {
	if why := checkWildcards(p); why != "" {
		return why
	}
	if n := strings.Trim(p, "*"); n != "" && !regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`).MatchString(n) {
		return "a namespace is made of letters, digits, '-', '_' and '.'."
	}
	return ""
}

func checkPathPattern(p string) string {
	if why := checkWildcards(p); why != "" {
		return why
	}
	if strings.ContainsAny(p, "?#") {
		return "paths are matched without the query string and fragment."
	}
	if p != "*" && !strings.HasPrefix(p, "*") && !strings.HasPrefix(p, "/") {
		return "request paths start with \"/\"."
	}
	return ""
}

func checkMethod(p string) string {
	if p == "*" {
		return ""
	}
	if !slices.Contains(methods, strings.ToUpper(p)) {
		return "not an HTTP method (" + strings.Join(methods, ", ") + ")."
	}
	return ""
}
