package config

import (
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Enforce says where the authorization rules of a service are enforced.
type Enforce string

// The enforcement points (docs/policy.md, "Where rules are enforced").
const (
	// EnforceProxy compiles the rules into the destination's proxy (Envoy
	// RBAC, or the RBAC of an xDS-enabled gRPC server). The default.
	EnforceProxy Enforce = "proxy"
	// EnforcePolicyd makes the destination's sidecar ask policyd (ext_authz)
	// about every request.
	EnforcePolicyd Enforce = "policyd"
	// EnforceBoth does both: RBAC in the proxy, then policyd.
	EnforceBoth Enforce = "both"
)

// DefaultEnforce is used when neither the mesh nor the service says.
const DefaultEnforce = EnforceProxy

// InProxy reports whether the proxy enforces the rules itself.
func (e Enforce) InProxy() bool { return e == EnforceProxy || e == EnforceBoth || e == "" }

// InPolicyd reports whether the proxy asks policyd.
func (e Enforce) InPolicyd() bool { return e == EnforcePolicyd || e == EnforceBoth }

// DefaultPolicydTimeout bounds one ext_authz check.
const DefaultPolicydTimeout = 200 * time.Millisecond

// PolicydDecl is the `policyd` block of the mesh: where sidecars reach
// bowline policyd. Exactly one of Address and Service is set.
type PolicydDecl struct {
	// Address is host:port of policyd's gRPC port.
	Address string
	// Service names a mesh service whose endpoints are policyd's gRPC ports.
	Service *ServiceRef
	// Timeout bounds one check; a check that times out is a denial.
	Timeout   time.Duration
	DeclRange hcl.Range
}

// AuthzAction is what a rule does with the requests it matches.
type AuthzAction string

// The rule actions.
const (
	AuthzAllow AuthzAction = "allow"
	AuthzDeny  AuthzAction = "deny"
)

// Authorization is an `authorization "<service>"` block: rules about the
// requests a service receives. A service may have several blocks (in several
// files); their rules add up.
type Authorization struct {
	Service ServiceRef
	// Enforce overrides the mesh's enforcement point ("" = the mesh's).
	Enforce      Enforce
	EnforceRange hcl.Range
	Rules        []*AuthzRule
	DeclRange    hcl.Range
}

// AuthzRule is one `rule` of an authorization block. A request matches the
// rule when it matches one of its from blocks (or there are none), one of
// its to blocks (or there are none) and every when block.
type AuthzRule struct {
	Action AuthzAction
	// DryRun rules decide nothing; what they would have decided is recorded.
	DryRun bool
	Audit  bool // requests it allows go to the audit log (docs/telemetry.md)
	From   []*AuthzSource
	To     []*AuthzOperation
	When   []*AuthzCondition
	// ID names the rule in metrics, logs and Envoy policies:
	// "<namespace>/<service>/<index>", the index counting the service's rules
	// in configuration order. Set when the configuration is assembled.
	ID        string
	DeclRange hcl.Range
}

// AuthzSource is a `from` block: who sends the request. Every attribute that
// is set must hold; a list holds when any of its values matches, a not_ list
// when none does.
type AuthzSource struct {
	Principals    []string
	NotPrincipals []string
	Services      []ServiceRef
	NotServices   []ServiceRef
	Namespaces    []string
	NotNamespaces []string
	DeclRange     hcl.Range
}

// AuthzOperation is a `to` block: what the request asks for.
type AuthzOperation struct {
	Methods    []string
	NotMethods []string
	Paths      []string
	NotPaths   []string
	Ports      []uint32
	NotPorts   []uint32
	Hosts      []string
	NotHosts   []string
	DeclRange  hcl.Range
}

// HTTPOnly reports whether the operation looks at HTTP attributes (methods,
// paths, hosts), which TCP services do not have.
func (o *AuthzOperation) HTTPOnly() bool {
	return len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths)+len(o.Hosts)+len(o.NotHosts) > 0
}

// ConditionKind is what a when condition looks at.
type ConditionKind string

// The condition kinds.
const (
	// ConditionHeader is request.headers[<name>].
	ConditionHeader ConditionKind = "header"
	// ConditionClaim is request.auth.claims[<name>] of the end-user JWT.
	ConditionClaim ConditionKind = "claim"
)

// AuthzCondition is a `when` block: a condition on a request attribute.
// Every part that is set must hold.
type AuthzCondition struct {
	// Key is the attribute as written, e.g. request.headers[x-tenant].
	Key  string
	Kind ConditionKind
	// Name is the header name (lower case) or the claim's path (one element
	// per [..] of the key).
	Name      string
	ClaimPath []string
	// Values: the attribute matches one of them (exact, "prefix*",
	// "*suffix", "*" for any value).
	Values []string
	// NotValues: the attribute matches none of them.
	NotValues []string
	// Regex (RE2): the whole attribute matches.
	Regex string
	// Present, when set: the attribute is there (true) or not (false).
	Present   *bool
	DeclRange hcl.Range
}

// Authz gathers the authorization rules of a configuration.
type Authz struct {
	// Services maps each service to its authorization blocks, in
	// configuration order.
	Services map[ServiceRef][]*Authorization
	// JWT maps each service to its jwt blocks (jwt.go).
	JWT map[ServiceRef][]*JWTDecl
}

// Rules returns the rules about a service, in configuration order.
func (a *Authz) Rules(svc ServiceRef) []*AuthzRule {
	if a == nil {
		return nil
	}
	var out []*AuthzRule
	for _, b := range a.Services[svc] {
		out = append(out, b.Rules...)
	}
	return out
}

// EnforceFor returns where the rules of a service are enforced: its own
// setting, else the mesh's, else DefaultEnforce.
func (c *Config) EnforceFor(svc ServiceRef) Enforce {
	if c == nil {
		return DefaultEnforce
	}
	if c.Authz != nil {
		for _, b := range c.Authz.Services[svc] {
			if b.Enforce != "" {
				return b.Enforce
			}
		}
	}
	if c.Mesh.Enforce != "" {
		return c.Mesh.Enforce
	}
	return DefaultEnforce
}
