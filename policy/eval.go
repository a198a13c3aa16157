package policy

import (
	"maps"
	"slices"
	"strings"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// Request is what a decision looks at: the attributes of one request (or,
// for a TCP destination, one connection).
type Request struct {
	// Principal is the source principal: the SPIFFE ID of the caller's
	// certificate, "" for a plaintext caller.
	Principal string
	// Method, Path (the query string and fragment are ignored) and Host (the
	// :authority) of an HTTP request.
	Method string
	Path   string
	Host   string
	// Port is the destination port: the port the destination workload
	// serves on (for a workload behind a sidecar, its application's port).
	Port uint32
	// Headers by lower-case name (several values joined with ",").
	Headers map[string]string
	// Claims are the verified end-user JWT's claims (nil: no token).
	Claims map[string]any
}

// Decision is the outcome of one check.
type Decision struct {
	Allow bool
	// Rule is the rule that decided, nil when the default did (no allow
	// rule required, or none matched).
	Rule *Rule
	// DryRun is set when the destination has dry-run rules: DryAllow and
	// DryRule are what the decision would have been with them enforced.
	DryRun   bool
	DryAllow bool
	DryRule  *Rule
}

// Decide applies a ruleset to a request. nsPrefix is
// "spiffe://<trust domain>/ns/". It does not allocate.
func (rs *Ruleset) Decide(req *Request, nsPrefix string) Decision {
	var d Decision
	d.Allow, d.Rule = rs.decide(req, nsPrefix, false)
	if len(rs.DryDeny)+len(rs.DryAllow) > 0 {
		d.DryRun = true
		d.DryAllow, d.DryRule = rs.decide(req, nsPrefix, true)
	}
	return d
}

func (rs *Ruleset) decide(req *Request, nsPrefix string, dry bool) (bool, *Rule) {
	for _, r := range rs.Deny {
		if r.Matches(req, nsPrefix) {
			return false, r
		}
	}
	if dry {
		for _, r := range rs.DryDeny {
			if r.Matches(req, nsPrefix) {
				return false, r
			}
		}
	}
	if !rs.MustAllow() && !(dry && len(rs.DryAllow) > 0) {
		return true, nil
	}
	for _, r := range rs.Allow {
		if r.Matches(req, nsPrefix) {
			return true, r
		}
	}
	if dry {
		for _, r := range rs.DryAllow {
			if r.Matches(req, nsPrefix) {
				return true, r
			}
		}
	}
	return false, nil
}

// Matches reports whether the rule applies to the request.
func (r *Rule) Matches(req *Request, nsPrefix string) bool {
	if len(r.From) > 0 {
		ok := false
		for _, s := range r.From {
			if s.matches(req.Principal, nsPrefix) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.To) > 0 {
		ok := false
		for _, o := range r.To {
			if o.matches(req) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for _, c := range r.When {
		if !c.matches(req) {
			return false
		}
	}
	return true
}

func (s *Source) matches(p, nsPrefix string) bool {
	if s.Principals != nil && (p == "" || !matchAny(s.Principals, p)) {
		return false
	}
	if s.NotPrincipals != nil && p != "" && matchAny(s.NotPrincipals, p) {
		return false
	}
	if s.services != nil {
		if _, ok := s.services[p]; !ok {
			return false
		}
	}
	if s.notServices != nil {
		if _, ok := s.notServices[p]; ok {
			return false
		}
	}
	if s.Namespaces != nil || s.NotNamespaces != nil {
		ns, ok := principalNamespace(p, nsPrefix)
		ok = ok && ns != ""
		if s.Namespaces != nil && (!ok || !matchAny(s.Namespaces, ns)) {
			return false
		}
		if s.NotNamespaces != nil && ok && matchAny(s.NotNamespaces, ns) {
			return false
		}
	}
	return true
}

// urlPath is the path without query string and fragment, as Envoy's
// url_path matcher sees it.
func urlPath(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

func (o *Operation) matches(req *Request) bool {
	if o.Methods != nil && !matchAny(o.Methods, req.Method) {
		return false
	}
	if o.NotMethods != nil && matchAny(o.NotMethods, req.Method) {
		return false
	}
	if o.Paths != nil || o.NotPaths != nil {
		path := urlPath(req.Path)
		if o.Paths != nil && !matchAny(o.Paths, path) {
			return false
		}
		if o.NotPaths != nil && matchAny(o.NotPaths, path) {
			return false
		}
	}
	if o.Ports != nil && !slices.Contains(o.Ports, req.Port) {
		return false
	}
	if o.NotPorts != nil && slices.Contains(o.NotPorts, req.Port) {
		return false
	}
	if o.Hosts != nil && !matchAny(o.Hosts, req.Host) {
		return false
	}
	if o.NotHosts != nil && matchAny(o.NotHosts, req.Host) {
		return false
	}
	return true
}

func (c *Condition) matches(req *Request) bool {
	if c.Kind == config.ConditionClaim {
		return c.matchesClaim(req.Claims)
	}
	v, ok := req.Headers[c.Name]
	// A header with an empty value counts as missing (as gRPC sees it).
	present := ok && v != ""
	if c.Present != nil && present != *c.Present {
		return false
	}
	if c.Values != nil && (!present || !matchAny(c.Values, v)) {
		return false
	}
	if c.NotValues != nil && present && matchAny(c.NotValues, v) {
		return false
	}
	if c.re != nil && (!ok || !c.re.MatchString(v)) {
		return false
	}
	return true
}

// matchesClaim: a string claim matches a pattern, a list claim matches when
// one of its strings does (Envoy's metadata matcher, string or list).
func (c *Condition) matchesClaim(claims map[string]any) bool {
	v, ok := claimValue(claims, c.ClaimPath)
	if c.Present != nil && ok != *c.Present {
		return false
	}
	match := func(f func(string) bool) bool {
		switch x := v.(type) {
		case string:
			return f(x)
		case []any:
			for _, e := range x {
				if s, isStr := e.(string); isStr && f(s) {
					return true
				}
			}
		}
		return false
	}
	if c.Values != nil && (!ok || !match(func(s string) bool { return matchAny(c.Values, s) })) {
		return false
	}
	if c.NotValues != nil && ok && match(func(s string) bool { return matchAny(c.NotValues, s) }) {
		return false
	}
	if c.re != nil && (!ok || !match(c.re.MatchString)) {
		return false
	}
	return true
}

func claimValue(claims map[string]any, path []string) (any, bool) {
	var v any = claims
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[p]; !ok {
			return nil, false
		}
	}
	return v, v != nil
}

// Evaluator decides requests for every destination of a configuration, the
// way the destinations' RBAC filters would. It is immutable: build a new one
// when the configuration or the catalog changes.
type Evaluator struct {
	meta     Meta
	nsPrefix string
	dests    map[string]*Entry // by "namespace/name"
	byID     map[string]*Entry // by a SPIFFE ID the destination's workloads present
	none     *Entry            // a destination without rules
}

// Entry is one destination as the evaluator holds it.
type Entry struct {
	Service     discovery.ServiceKey
	Destination *Destination
	Ruleset     *Ruleset
	// appPorts maps the sidecar ports of the destination's endpoints to
	// their applications' ports.
	appPorts map[uint32]uint32
}

// AppPort returns the application port behind a port a connection arrived
// on: a sidecar's inbound port maps to its application's port (a sidecar's
// network checks carry the port of the sidecar); any other port is itself.
func (en *Entry) AppPort(p uint32) uint32 {
	if a, ok := en.appPorts[p]; ok {
		return a
	}
	return p
}

// NewEvaluator resolves every destination's rules against the catalog.
func NewEvaluator(cfg *config.Config, cat Catalog) *Evaluator {
	m := MetaOf(cfg)
	e := &Evaluator{meta: m, nsPrefix: "spiffe://" + m.TrustDomain + "/ns/", dests: map[string]*Entry{}, byID: map[string]*Entry{}}
	e.none = &Entry{Ruleset: (*Destination)(nil).Ruleset(TargetHTTP, m)}
	if cfg == nil || cfg.Authz == nil {
		return e
	}
	ambiguous := map[string]bool{}
	for _, ref := range slices.SortedFunc(maps.Keys(cfg.Authz.Services), func(a, b config.ServiceRef) int {
		return strings.Compare(a.String(), b.String())
	}) {
		k := discovery.ServiceKey{Namespace: ref.Namespace, Name: ref.Name}
		d := ForService(cfg, cat, k)
		if d == nil {
			continue
		}
		en := &Entry{Service: k, Destination: d, Ruleset: d.Ruleset(TargetFor(d.Protocol, false), m)}
		if svc, ok := lookup(cat, k); ok {
			for _, ep := range svc.Endpoints {
				if ep.SidecarPort != 0 {
					if en.appPorts == nil {
						en.appPorts = map[uint32]uint32{}
					}
					en.appPorts[ep.SidecarPort] = ep.Port
				}
			}
		}
		e.dests[k.String()] = en
		for _, id := range ServicePrincipals(m.TrustDomain, k, cat) {
			if _, dup := e.byID[id]; dup {
				ambiguous[id] = true
			}
			e.byID[id] = en
		}
	}
	for id := range ambiguous {
		e.byID[id] = nil // several destinations: the ID does not tell which
	}
	return e
}

// NamespacePrefix is "spiffe://<trust domain>/ns/".
func (e *Evaluator) NamespacePrefix() string { return e.nsPrefix }

// Lookup finds a destination by name ("namespace/name"), else by the SPIFFE
// ID its workload presented. It reports false when neither tells.
func (e *Evaluator) Lookup(name, principal string) (*Entry, bool) {
	if name != "" {
		if en, ok := e.dests[name]; ok {
			return en, true
		}
		if strings.IndexByte(name, '/') > 0 {
			return e.none, true
		}
		return nil, false
	}
	if principal == "" {
		return nil, false
	}
	if en, ok := e.byID[principal]; ok {
		return en, en != nil
	}
	// A service's own SPIFFE ID names it even when it has no rules.
	if ns, ok := principalNamespace(principal, e.nsPrefix); ok {
		rest := principal[len(e.nsPrefix)+len(ns):]
		if strings.HasPrefix(rest, "/svc/") && len(rest) > len("/svc/") {
			return e.none, true
		}
	}
	return nil, false
}

// Decide looks the destination up and decides. A request whose destination
// cannot be told is denied.
func (e *Evaluator) Decide(name, destPrincipal string, req *Request) (Decision, *Entry) {
	en, ok := e.Lookup(name, destPrincipal)
	if !ok {
		return Decision{}, nil
	}
	return en.Ruleset.Decide(req, e.nsPrefix), en
}

// Entries returns the destinations with rules, by name.
func (e *Evaluator) Entries() []*Entry {
	out := make([]*Entry, 0, len(e.dests))
	for _, k := range slices.Sorted(maps.Keys(e.dests)) {
		out = append(out, e.dests[k])
	}
	return out
}

// Meta returns the mesh settings the evaluator uses.
func (e *Evaluator) Meta() Meta { return e.meta }

func lookup(cat Catalog, k discovery.ServiceKey) (*discovery.Service, bool) {
	if cat == nil {
		return nil, false
	}
	return cat.Service(k)
}
