package config

import (
	"slices"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// OnError says what happens to a request when its global limits cannot be
// decided: policyd does not answer (in time), or its counter store (Redis)
// does not.
type OnError string

// The on_error values.
const (
	// OnErrorAllow admits the request (the default: a rate limiter that is
	// down does not take the service down with it).
	OnErrorAllow OnError = "allow"
	// OnErrorDeny refuses it.
	OnErrorDeny OnError = "deny"
)

// DefaultOnError is used when a rate_limit block does not say.
const DefaultOnError = OnErrorAllow

// RateLimitDomain is the rate limit domain of every descriptor Bowline's
// proxies send to policyd (docs/policy.md, "The wire contract").
const RateLimitDomain = "bowline"

// RateLimitKeyKind is what a `by` attribute counts by.
type RateLimitKeyKind string

// The by attributes.
const (
	// KeySourceService is source.service: the calling service,
	// "<namespace>/<service>", taken from its mTLS certificate.
	KeySourceService RateLimitKeyKind = "source.service"
	// KeySourcePrincipal is source.principal: the caller's SPIFFE ID.
	KeySourcePrincipal RateLimitKeyKind = "source.principal"
	// KeyHeader is request.headers["<name>"].
	KeyHeader RateLimitKeyKind = "request.headers"
	// KeyPath is request.path (without the query string).
	KeyPath RateLimitKeyKind = "request.path"
)

// RateLimitKey is one attribute of a global limit's `by` list.
type RateLimitKey struct {
	Kind RateLimitKeyKind
	// Header is the header name (lower case) for KeyHeader.
	Header string
}

// DescriptorKey is the key of the descriptor entry that carries the
// attribute: "source", "principal", "header:<name>" or "path".
func (k RateLimitKey) DescriptorKey() string {
	switch k.Kind {
	case KeySourceService:
		return "source"
	case KeySourcePrincipal:
		return "principal"
	case KeyHeader:
		return "header:" + k.Header
	case KeyPath:
		return "path"
	}
	return string(k.Kind)
}

// String renders the attribute as written in HCL.
func (k RateLimitKey) String() string {
	if k.Kind == KeyHeader {
		return `request.headers["` + k.Header + `"]`
	}
	return string(k.Kind)
}

// RateLimit is a `rate_limit "<service>"` block: the limits on the requests
// a service receives. A service has at most one.
type RateLimit struct {
	Service ServiceRef
	// OnError applies to the service's global limits.
	OnError      OnError
	OnErrorRange hcl.Range
	// Global limits are counted by policyd, across every instance of the
	// service (and every policyd replica, through Redis).
	Global []*GlobalLimit
	// Local is enforced by each sidecar on its own (nil: none).
	Local     *LocalLimit
	DeclRange hcl.Range
}

// GlobalLimit is a `global` block: at most Requests per Per for the requests
// that match, with one counter per distinct combination of the By values.
type GlobalLimit struct {
	Requests uint32
	Per      time.Duration
	By       []RateLimitKey
	// Match restricts the limit to some requests (nil: every request). Only
	// paths, methods and headers are allowed.
	Match *RouteMatch
	// ID names the limit in policyd's counters, metrics and responses:
	// "<namespace>/<service>/<index>", the index counting the service's
	// global blocks in order.
	ID        string
	DeclRange hcl.Range
}

// Matched reports whether the limit applies to some requests only.
func (g *GlobalLimit) Matched() bool { return !g.Match.CatchAll() }

// DescriptorKeys are the keys of the descriptor entries the proxy sends for
// this limit, in order: "destination", then one per by attribute.
func (g *GlobalLimit) DescriptorKeys() []string {
	keys := make([]string, 0, 1+len(g.By))
	keys = append(keys, "destination")
	for _, k := range g.By {
		keys = append(keys, k.DescriptorKey())
	}
	return keys
}

// LocalLimit is a `local` block: a token bucket in every sidecar of the
// service, Requests tokens refilled every Per.
type LocalLimit struct {
	Requests  uint32
	Per       time.Duration
	DeclRange hcl.Range
}

// RateLimits gathers the rate_limit blocks of a configuration.
type RateLimits struct {
	Services map[ServiceRef]*RateLimit
}

// For returns the rate limits of a service, or nil.
func (r *RateLimits) For(svc ServiceRef) *RateLimit {
	if r == nil {
		return nil
	}
	return r.Services[svc]
}

// Refs returns the services that have rate limits, sorted.
func (r *RateLimits) Refs() []ServiceRef {
	if r == nil {
		return nil
	}
	return sortedRefs(r.Services)
}

// usesSource reports whether a limit counts by the caller's identity.
func (g *GlobalLimit) usesSource() bool {
	return slices.ContainsFunc(g.By, func(k RateLimitKey) bool {
		return k.Kind == KeySourceService || k.Kind == KeySourcePrincipal
	})
}
