package policy

import (
	"regexp"
	"slices"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/bowlinemesh/bowline/config"
)

// JWTFilter is the name of Envoy's JWT authentication filter, under which
// it writes the verified token's payload to dynamic metadata.
const JWTFilter = "envoy.filters.http.jwt_authn"

// JWTPayloadKey is the metadata key of the payload (payload_in_metadata).
const JWTPayloadKey = "payload"

// JWTClockSkew is the leeway on a token's exp and nbf (Envoy's default).
const JWTClockSkew = 60 * time.Second

// RBACOptions shape the compiled RBAC.
type RBACOptions struct {
	TrustDomain string
	// LocalPort, when set, is the port the proxy's workload serves on: an
	// Envoy sidecar receives on its own port, so rules about ports are
	// decided with this one when the configuration is compiled.
	LocalPort uint32
}

// RBACConfig is one RBAC filter: its enforcing rules (nil: it enforces
// nothing) and its shadow rules (nil: no dry-run rules).
type RBACConfig struct {
	// Name is "deny" or "allow".
	Name   string
	Rules  *rbacv3.RBAC
	Shadow *rbacv3.RBAC
}

// RBAC compiles a ruleset to RBAC filters, to be chained in order: a DENY
// filter with the deny rules, then an ALLOW filter with the allow rules (an
// ALLOW filter without policies denies everything: that is how a destination
// whose allow rules cannot match, or default_deny, is enforced). Dry-run
// rules become shadow rules. None when the ruleset is empty.
func (rs *Ruleset) RBAC(o RBACOptions) []RBACConfig {
	c := compiler{o: o, nsPrefix: "spiffe://" + o.TrustDomain + "/ns/"}
	var out []RBACConfig
	if len(rs.Deny)+len(rs.DryDeny) > 0 {
		f := RBACConfig{Name: "deny"}
		if len(rs.Deny) > 0 {
			f.Rules = c.rbac(rbacv3.RBAC_DENY, rs.Deny)
		}
		if len(rs.DryDeny) > 0 {
			f.Shadow = c.rbac(rbacv3.RBAC_DENY, slices.Concat(rs.Deny, rs.DryDeny))
		}
		out = append(out, f)
	}
	if rs.MustAllow() || len(rs.DryAllow) > 0 {
		f := RBACConfig{Name: "allow"}
		if rs.MustAllow() {
			f.Rules = c.rbac(rbacv3.RBAC_ALLOW, rs.Allow)
		}
		if len(rs.DryAllow) > 0 {
			f.Shadow = c.rbac(rbacv3.RBAC_ALLOW, slices.Concat(rs.Allow, rs.DryAllow))
		}
		out = append(out, f)
	}
	return out
}

type compiler struct {
	o        RBACOptions
	nsPrefix string
}

func (c compiler) rbac(action rbacv3.RBAC_Action, rules []*Rule) *rbacv3.RBAC {
	r := &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{}}
	for _, rule := range rules {
		r.Policies[rule.ID] = c.policy(rule)
	}
	return r
}

func (c compiler) policy(r *Rule) *rbacv3.Policy {
	p := &rbacv3.Policy{}
	if len(r.From) == 0 {
		p.Principals = []*rbacv3.Principal{anyPrincipal()}
	}
	for _, s := range r.From {
		p.Principals = append(p.Principals, c.source(s))
	}
	var parts []*rbacv3.Permission
	if len(r.To) > 0 {
		var ops []*rbacv3.Permission
		for _, o := range r.To {
			ops = append(ops, c.operation(o))
		}
		parts = append(parts, orPerms(ops))
	}
	for _, w := range r.When {
		parts = append(parts, c.condition(w))
	}
	p.Permissions = []*rbacv3.Permission{andPerms(parts)}
	return p
}

func (c compiler) source(s *Source) *rbacv3.Principal {
	var parts []*rbacv3.Principal
	add := func(ids []*rbacv3.Principal, negate bool) {
		if ids == nil {
			return
		}
		p := orIDs(ids)
		if negate {
			p = &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
		}
		parts = append(parts, p)
	}
	patterns := func(ps []Pattern) []*rbacv3.Principal {
		if ps == nil {
			return nil
		}
		out := make([]*rbacv3.Principal, len(ps))
		for i, p := range ps {
			if p.Kind == Any {
				out[i] = authenticated(nil) // any authenticated caller
			} else {
				out[i] = authenticated(stringMatcher(p))
			}
		}
		return out
	}
	exact := func(ids []string) []*rbacv3.Principal {
		if ids == nil {
			return nil
		}
		out := make([]*rbacv3.Principal, len(ids))
		for i, id := range ids {
			out[i] = authenticated(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: id}})
		}
		return out
	}
	namespaces := func(ps []Pattern) []*rbacv3.Principal {
		if ps == nil {
			return nil
		}
		out := make([]*rbacv3.Principal, len(ps))
		for i, p := range ps {
			out[i] = authenticated(c.namespaceMatcher(p))
		}
		return out
	}
	add(patterns(s.Principals), false)
	add(patterns(s.NotPrincipals), true)
	add(exact(s.Services), false)
	add(exact(s.NotServices), true)
	add(namespaces(s.Namespaces), false)
	add(namespaces(s.NotNamespaces), true)
	if len(parts) == 0 {
		return anyPrincipal()
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: parts}}}
}

// namespaceMatcher matches the SPIFFE IDs of a namespace of the trust
// domain: spiffe://<td>/ns/<namespace>/...
func (c compiler) namespaceMatcher(p Pattern) *matcher.StringMatcher {
	q := regexp.QuoteMeta
	var re string
	switch p.Kind {
	case Exact:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: c.nsPrefix + p.Value + "/"}}
	case Prefix:
		re = q(c.nsPrefix) + q(p.Value) + `[^/]*/.*`
	case Suffix:
		re = q(c.nsPrefix) + `[^/]*` + q(p.Value) + `/.*`
	default:
		re = q(c.nsPrefix) + `[^/]+/.*`
	}
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}}
}

func (c compiler) operation(o *Operation) *rbacv3.Permission {
	var parts []*rbacv3.Permission
	add := func(ps []*rbacv3.Permission, negate bool) {
		if ps == nil {
			return
		}
		p := orPerms(ps)
		if negate {
			p = notPerm(p)
		}
		parts = append(parts, p)
	}
	headers := func(name string, ps []Pattern) []*rbacv3.Permission {
		if ps == nil {
			return nil
		}
		out := make([]*rbacv3.Permission, len(ps))
		for i, p := range ps {
			if p.Kind == Any {
				out[i] = anyPerm()
				continue
			}
			out[i] = &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &route.HeaderMatcher{
				Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: stringMatcher(p)},
			}}}
		}
		return out
	}
	paths := func(ps []Pattern) []*rbacv3.Permission {
		if ps == nil {
			return nil
		}
		out := make([]*rbacv3.Permission, len(ps))
		for i, p := range ps {
			if p.Kind == Any {
				out[i] = anyPerm()
				continue
			}
			out[i] = &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcher.PathMatcher{
				Rule: &matcher.PathMatcher_Path{Path: stringMatcher(p)},
			}}}
		}
		return out
	}
	ports := func(ps []uint32) []*rbacv3.Permission {
		if ps == nil {
			return nil
		}
		if c.o.LocalPort != 0 {
			if slices.Contains(ps, c.o.LocalPort) {
				return []*rbacv3.Permission{anyPerm()}
			}
			return []*rbacv3.Permission{notPerm(anyPerm())}
		}
		out := make([]*rbacv3.Permission, len(ps))
		for i, p := range ps {
			out[i] = &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: p}}
		}
		return out
	}
	add(headers(":method", o.Methods), false)
	add(headers(":method", o.NotMethods), true)
	add(paths(o.Paths), false)
	add(paths(o.NotPaths), true)
	add(ports(o.Ports), false)
	add(ports(o.NotPorts), true)
	add(headers(":authority", o.Hosts), false)
	add(headers(":authority", o.NotHosts), true)
	return andPerms(parts)
}

func (c compiler) condition(w *Condition) *rbacv3.Permission {
	var parts []*rbacv3.Permission
	if w.Kind == config.ConditionClaim {
		return c.claimCondition(w)
	}
	header := func(hm *route.HeaderMatcher) *rbacv3.Permission {
		hm.Name = w.Name
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: hm}}
	}
	// A header is present when it has a value: gRPC-Go's present_match
	// takes an empty header for a missing one, Envoy's does not, so
	// presence is matched as a non-empty value, which both agree on.
	present := func() *rbacv3.Permission {
		return header(&route.HeaderMatcher{HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
			MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: ".+"}},
		}}})
	}
	values := func(ps []Pattern) *rbacv3.Permission {
		out := make([]*rbacv3.Permission, len(ps))
		for i, p := range ps {
			if p.Kind == Any {
				out[i] = present()
				continue
			}
			out[i] = header(&route.HeaderMatcher{HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: stringMatcher(p)}})
		}
		return orPerms(out)
	}
	if w.Present != nil {
		if *w.Present {
			parts = append(parts, present())
		} else {
			parts = append(parts, notPerm(present()))
		}
	}
	if w.Values != nil {
		parts = append(parts, values(w.Values))
	}
	if w.NotValues != nil {
		parts = append(parts, notPerm(values(w.NotValues)))
	}
	if w.Regex != "" {
		parts = append(parts, header(&route.HeaderMatcher{HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
			MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: w.Regex}},
		}}}))
	}
	return andPerms(parts)
}

// claimCondition matches the payload jwt_authn writes to dynamic metadata:
// a string claim, or a list claim one of whose elements matches.
func (c compiler) claimCondition(w *Condition) *rbacv3.Permission {
	path := []*matcher.MetadataMatcher_PathSegment{{Segment: &matcher.MetadataMatcher_PathSegment_Key{Key: JWTPayloadKey}}}
	for _, k := range w.ClaimPath {
		path = append(path, &matcher.MetadataMatcher_PathSegment{Segment: &matcher.MetadataMatcher_PathSegment_Key{Key: k}})
	}
	meta := func(v *matcher.ValueMatcher, invert bool) *rbacv3.Permission {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Metadata{Metadata: &matcher.MetadataMatcher{
			Filter: JWTFilter, Path: path, Value: v, Invert: invert,
		}}}
	}
	str := func(sm *matcher.StringMatcher) *rbacv3.Permission {
		s := &matcher.ValueMatcher{MatchPattern: &matcher.ValueMatcher_StringMatch{StringMatch: sm}}
		l := &matcher.ValueMatcher{MatchPattern: &matcher.ValueMatcher_ListMatch{ListMatch: &matcher.ListMatcher{
			MatchPattern: &matcher.ListMatcher_OneOf{OneOf: s},
		}}}
		return orPerms([]*rbacv3.Permission{meta(s, false), meta(l, false)})
	}
	present := meta(&matcher.ValueMatcher{MatchPattern: &matcher.ValueMatcher_PresentMatch{PresentMatch: true}}, false)
	values := func(ps []Pattern) *rbacv3.Permission {
		out := make([]*rbacv3.Permission, len(ps))
		for i, p := range ps {
			if p.Kind == Any {
				out[i] = present
				continue
			}
			out[i] = str(stringMatcher(p))
		}
		return orPerms(out)
	}
	var parts []*rbacv3.Permission
	if w.Present != nil {
		if *w.Present {
			parts = append(parts, present)
		} else {
			parts = append(parts, notPerm(present))
		}
	}
	if w.Values != nil {
		parts = append(parts, values(w.Values))
	}
	if w.NotValues != nil {
		parts = append(parts, notPerm(values(w.NotValues)))
	}
	if w.Regex != "" {
		parts = append(parts, str(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: w.Regex}}}))
	}
	return andPerms(parts)
}

func stringMatcher(p Pattern) *matcher.StringMatcher {
	m := &matcher.StringMatcher{IgnoreCase: p.Fold}
	switch p.Kind {
	case Prefix:
		m.MatchPattern = &matcher.StringMatcher_Prefix{Prefix: p.Value}
	case Suffix:
		m.MatchPattern = &matcher.StringMatcher_Suffix{Suffix: p.Value}
	default:
		m.MatchPattern = &matcher.StringMatcher_Exact{Exact: p.Value}
	}
	return m
}

func authenticated(m *matcher.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

func orIDs(ids []*rbacv3.Principal) *rbacv3.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func anyPerm() *rbacv3.Permission { return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}} }

func notPerm(p *rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}

func orPerms(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func andPerms(ps []*rbacv3.Permission) *rbacv3.Permission {
	switch len(ps) {
	case 0:
		return anyPerm()
	case 1:
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}
