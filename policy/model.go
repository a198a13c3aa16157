// Package policy is Bowline's authorization model. It takes the
// authorization blocks of the configuration, resolves them against the
// catalog (which principals a service has) and carries out one semantics,
// Istio's, in three places:
//
//   - Envoy sidecars: RBAC filters compiled by RBAC (rbac.go), HTTP or
//     network;
//   - xDS-enabled gRPC servers: the same RBAC, for what gRPC evaluates
//     (Target);
//   - bowline policyd: the Evaluator (eval.go), which decides ext_authz
//     checks the way those RBAC filters would.
//
// Semantics (docs/policy.md): deny rules are checked first and a match
// denies; if any allow rule applies to the destination, a request must match
// one of them; a destination with no allow rule admits everything, unless the
// mesh sets default_deny. Dry-run rules decide nothing; what they would have
// decided is recorded.
package policy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// Catalog is what the model reads from the discovery catalog
// (*discovery.Snapshot implements it).
type Catalog interface {
	Service(k discovery.ServiceKey) (*discovery.Service, bool)
}

// Rule is an authorization rule resolved against the catalog: the services
// it names are sets of principals.
type Rule struct {
	// ID names the rule: "<namespace>/<service>/<index>".
	ID string
	// Pos is where it is declared, "file:line".
	Pos    string
	Action config.AuthzAction
	DryRun bool
	// From (any of them), To (any of them) and When (all of them) must
	// hold; an empty list holds.
	From []*Source
	To   []*Operation
	When []*Condition
}

// Source is a resolved from block.
type Source struct {
	Principals    []Pattern
	NotPrincipals []Pattern
	// Services and NotServices are the principals of the services named
	// (ServicePrincipals), sorted; nil when not set.
	Services    []string
	NotServices []string
	// ServiceNames and NotServiceNames are the services as written.
	ServiceNames    []discovery.ServiceKey
	NotServiceNames []discovery.ServiceKey
	// Namespaces match the namespace of a SPIFFE ID of the mesh's trust
	// domain.
	Namespaces    []Pattern
	NotNamespaces []Pattern

	services, notServices map[string]struct{}
}

// Operation is a resolved to block.
type Operation struct {
	Methods    []Pattern
	NotMethods []Pattern
	Paths      []Pattern
	NotPaths   []Pattern
	Ports      []uint32
	NotPorts   []uint32
	Hosts      []Pattern
	NotHosts   []Pattern
}

func (o *Operation) httpOnly() bool {
	return o.Methods != nil || o.NotMethods != nil || o.Paths != nil || o.NotPaths != nil || o.Hosts != nil || o.NotHosts != nil
}

// Condition is a resolved when block.
type Condition struct {
	Kind config.ConditionKind
	// Key is the attribute as written.
	Key string
	// Name is the header (lower case) or the claim's dotted path.
	Name      string
	ClaimPath []string
	Values    []Pattern
	NotValues []Pattern
	Regex     string
	Present   *bool

	re *regexp.Regexp
}

// Destination is everything about the requests one service receives.
type Destination struct {
	Service  discovery.ServiceKey
	Protocol discovery.Protocol
	Enforce  config.Enforce
	// Rules in configuration order, dry-run ones included.
	Rules []*Rule
	// Sources are the services whose principals the rules use: the
	// destination's rules change when their endpoints' identities do.
	Sources []discovery.ServiceKey
}

// Meta are the mesh-wide settings the model needs.
type Meta struct {
	TrustDomain string
	DefaultDeny bool
}

// MetaOf reads them from a configuration.
func MetaOf(cfg *config.Config) Meta {
	m := Meta{TrustDomain: config.DefaultTrustDomain}
	if cfg != nil {
		if cfg.Mesh.TrustDomain != "" {
			m.TrustDomain = cfg.Mesh.TrustDomain
		}
		m.DefaultDeny = cfg.Mesh.DefaultDeny
	}
	return m
}

// ServicePrincipals are the principals a service's workloads present: its
// SPIFFE ID spiffe://<trust domain>/ns/<namespace>/svc/<name>, and the
// identities the catalog reports for its endpoints (on Kubernetes, their
// service accounts' IDs). Proxies and policyd resolve `services = [...]`
// with this one function, from the same catalog.
func ServicePrincipals(trustDomain string, k discovery.ServiceKey, cat Catalog) []string {
	out := []string{discovery.ServiceIdentity(trustDomain, k.Namespace, k.Name)}
	if cat != nil {
		if svc, ok := cat.Service(k); ok {
			for _, e := range svc.Endpoints {
				if e.Identity != "" {
					out = append(out, e.Identity)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ProtocolOf is a service's protocol as proxies see it: service_defaults
// first, then the catalog ("" when neither knows it).
func ProtocolOf(cfg *config.Config, cat Catalog, k discovery.ServiceKey) discovery.Protocol {
	if cfg != nil && cfg.Traffic != nil {
		if d, ok := cfg.Traffic.Defaults[config.ServiceRef{Namespace: k.Namespace, Name: k.Name}]; ok && d.Protocol != "" {
			return discovery.Protocol(d.Protocol)
		}
	}
	if cat != nil {
		if svc, ok := cat.Service(k); ok {
			return svc.Protocol
		}
	}
	return ""
}

// ForService resolves the rules about one service. It returns nil when the
// configuration has none and sets no enforce for it.
func ForService(cfg *config.Config, cat Catalog, k discovery.ServiceKey) *Destination {
	if cfg == nil || cfg.Authz == nil {
		return nil
	}
	blocks := cfg.Authz.Services[config.ServiceRef{Namespace: k.Namespace, Name: k.Name}]
	if len(blocks) == 0 {
		return nil
	}
	td := MetaOf(cfg).TrustDomain
	d := &Destination{Service: k, Protocol: ProtocolOf(cfg, cat, k), Enforce: cfg.EnforceFor(config.ServiceRef{Namespace: k.Namespace, Name: k.Name})}
	sources := map[discovery.ServiceKey]bool{}
	resolve := func(refs []config.ServiceRef) []string {
		if refs == nil {
			return nil
		}
		var out []string
		for _, r := range refs {
			sk := discovery.ServiceKey{Namespace: r.Namespace, Name: r.Name}
			sources[sk] = true
			out = append(out, ServicePrincipals(td, sk, cat)...)
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	for _, b := range blocks {
		for _, r := range b.Rules {
			d.Rules = append(d.Rules, resolveRule(r, resolve))
		}
	}
	for sk := range sources {
		d.Sources = append(d.Sources, sk)
	}
	slices.SortFunc(d.Sources, discovery.ServiceKey.Compare)
	return d
}

func resolveRule(r *config.AuthzRule, resolve func([]config.ServiceRef) []string) *Rule {
	out := &Rule{ID: r.ID, Pos: fmt.Sprintf("%s:%d", r.DeclRange.Filename, r.DeclRange.Start.Line), Action: r.Action, DryRun: r.DryRun}
	for _, f := range r.From {
		s := &Source{
			Principals: parsePatterns(f.Principals, false), NotPrincipals: parsePatterns(f.NotPrincipals, false),
			Services: resolve(f.Services), NotServices: resolve(f.NotServices),
			ServiceNames: keys(f.Services), NotServiceNames: keys(f.NotServices),
			Namespaces: parsePatterns(f.Namespaces, false), NotNamespaces: parsePatterns(f.NotNamespaces, false),
		}
		s.index()
		out.From = append(out.From, s)
	}
	for _, t := range r.To {
		out.To = append(out.To, &Operation{
			Methods: parsePatterns(t.Methods, false), NotMethods: parsePatterns(t.NotMethods, false),
			Paths: parsePatterns(t.Paths, false), NotPaths: parsePatterns(t.NotPaths, false),
			Ports: slices.Clone(t.Ports), NotPorts: slices.Clone(t.NotPorts),
			Hosts: parsePatterns(t.Hosts, true), NotHosts: parsePatterns(t.NotHosts, true),
		})
	}
	for _, w := range r.When {
		c := &Condition{Kind: w.Kind, Key: w.Key, Name: w.Name, ClaimPath: w.ClaimPath,
			Values: parsePatterns(w.Values, false), NotValues: parsePatterns(w.NotValues, false), Regex: w.Regex, Present: w.Present}
		if c.Regex != "" {
			c.re = regexp.MustCompile("^(?:" + c.Regex + ")$") // checked when the configuration was loaded
		}
		out.When = append(out.When, c)
	}
	return out
}

func keys(refs []config.ServiceRef) []discovery.ServiceKey {
	if refs == nil {
		return nil
	}
	out := make([]discovery.ServiceKey, len(refs))
	for i, r := range refs {
		out[i] = discovery.ServiceKey{Namespace: r.Namespace, Name: r.Name}
	}
	return out
}

func (s *Source) index() {
	set := func(ps []string) map[string]struct{} {
		if ps == nil {
			return nil
		}
		m := make(map[string]struct{}, len(ps))
		for _, p := range ps {
			m[p] = struct{}{}
		}
		return m
	}
	s.services, s.notServices = set(s.Services), set(s.NotServices)
}

// Target is a kind of enforcement point, with what it can evaluate.
type Target uint8

// The targets.
const (
	// TargetHTTP: an Envoy sidecar's HTTP filters, or policyd deciding an
	// HTTP request. Evaluates everything.
	TargetHTTP Target = iota
	// TargetTCP: Envoy's network RBAC, or policyd deciding a connection: no
	// methods, paths, hosts, headers or claims.
	TargetTCP
	// TargetGRPC: an xDS-enabled gRPC server: no JWT claims.
	TargetGRPC
)

// TargetFor is the target that enforces a destination of this protocol in
// a proxy of this kind (grpcServer: an xDS-enabled gRPC server).
func TargetFor(p discovery.Protocol, grpcServer bool) Target {
	switch {
	case grpcServer:
		return TargetGRPC
	case p == discovery.ProtocolTCP:
		return TargetTCP
	}
	return TargetHTTP
}

// Ruleset is a destination's rules as one target enforces them.
type Ruleset struct {
	Deny     []*Rule
	Allow    []*Rule
	DryDeny  []*Rule
	DryAllow []*Rule
	// AllowPresent: the destination has enforced allow rules, so a request
	// must match one (even if none can match on this target).
	AllowPresent bool
	// DefaultDeny: no allow rule admits a request means it is denied.
	DefaultDeny bool
}

// MustAllow reports whether requests need an allow rule to pass.
func (rs *Ruleset) MustAllow() bool { return rs.AllowPresent || rs.DefaultDeny }

// Empty reports whether the ruleset lets everything through and records
// nothing.
func (rs *Ruleset) Empty() bool {
	return !rs.MustAllow() && len(rs.Deny)+len(rs.DryDeny)+len(rs.DryAllow) == 0
}

// Ruleset returns the rules as target t enforces them. A condition the
// target cannot evaluate makes an allow rule that needs it never match, and
// is dropped from a deny rule (which then applies more widely): both fail
// closed. d may be nil (a destination without rules).
func (d *Destination) Ruleset(t Target, m Meta) *Ruleset {
	rs := &Ruleset{DefaultDeny: m.DefaultDeny}
	if d == nil {
		return rs
	}
	for _, r := range d.Rules {
		if r.Action == config.AuthzAllow && !r.DryRun {
			rs.AllowPresent = true
		}
		tr, ok := r.forTarget(t)
		if !ok {
			continue
		}
		switch {
		case r.Action == config.AuthzDeny && !r.DryRun:
			rs.Deny = append(rs.Deny, tr)
		case r.Action == config.AuthzAllow && !r.DryRun:
			rs.Allow = append(rs.Allow, tr)
		case r.Action == config.AuthzDeny:
			rs.DryDeny = append(rs.DryDeny, tr)
		default:
			rs.DryAllow = append(rs.DryAllow, tr)
		}
	}
	return rs
}

func (c *Condition) evaluable(t Target) bool {
	switch t {
	case TargetTCP:
		return false
	case TargetGRPC:
		return c.Kind != config.ConditionClaim
	}
	return true
}

// forTarget rewrites a rule for a target; false means it can never match.
func (r *Rule) forTarget(t Target) (*Rule, bool) {
	if t == TargetHTTP {
		return r, true
	}
	deny := r.Action == config.AuthzDeny
	changed := false
	var when []*Condition
	for _, c := range r.When {
		if c.evaluable(t) {
			when = append(when, c)
			continue
		}
		if !deny {
			return nil, false
		}
		changed = true
	}
	to := r.To
	if t == TargetTCP {
		to = nil
		for _, o := range r.To {
			if !o.httpOnly() {
				to = append(to, o)
				continue
			}
			changed = true
			if !deny {
				continue // this alternative never matches
			}
			to = append(to, &Operation{Ports: o.Ports, NotPorts: o.NotPorts})
		}
		if len(r.To) > 0 && len(to) == 0 {
			return nil, false
		}
	}
	if !changed {
		return r, true
	}
	c := *r
	c.When, c.To = when, to
	return &c, true
}

// principalNamespace returns the namespace of a SPIFFE ID of the trust
// domain (the segment after "/ns/", which must be followed by "/").
func principalNamespace(principal, nsPrefix string) (string, bool) {
	if !strings.HasPrefix(principal, nsPrefix) {
		return "", false
	}
	rest := principal[len(nsPrefix):]
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return "", false
	}
	return rest[:i], true
}
