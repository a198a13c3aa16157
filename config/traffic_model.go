package config

import (
	"time"

	"github.com/hashicorp/hcl/v2"
)

// ServiceRef names the service a rule block is about.
type ServiceRef struct {
	Namespace string
	Name      string
}

// String renders the reference as namespace/name.
func (r ServiceRef) String() string { return r.Namespace + "/" + r.Name }

// ServiceDefaults is the `service_defaults` block: how calls to a service are
// made, whatever route they take.
type ServiceDefaults struct {
	Service        ServiceRef
	Protocol       string
	ConnectTimeout time.Duration
	RequestTimeout time.Duration
	Retries        *RetryPolicy
	LoadBalancer   *LoadBalancer
	CircuitBreaker *CircuitBreaker
	Outlier        *OutlierDetection
	// LocalityFailover prefers endpoints in the caller's zone, then region,
	// then anywhere.
	LocalityFailover bool
	DeclRange        hcl.Range
}

// RetryPolicy is a `retries` block.
type RetryPolicy struct {
	Attempts      uint32
	PerTryTimeout time.Duration
	RetryOn       []string
	DeclRange     hcl.Range
}

// LoadBalancer is a `load_balancer` block.
type LoadBalancer struct {
	Policy      string // round_robin, least_request, random, ring_hash, maglev
	Hash        []HashKey
	MinRingSize uint64
	MaxRingSize uint64
	ChoiceCount uint32
	DeclRange   hcl.Range
}

// HashKey is one `hash` block: what consistent hashing hashes on.
type HashKey struct {
	Header    string
	Cookie    string
	CookieTTL time.Duration
	SourceIP  bool
	DeclRange hcl.Range
}

// CircuitBreaker is a `circuit_breaker` block; nil fields keep Envoy's defaults.
type CircuitBreaker struct {
	MaxConnections     *uint32
	MaxPendingRequests *uint32
	MaxRequests        *uint32
	MaxRetries         *uint32
	DeclRange          hcl.Range
}

// OutlierDetection is an `outlier_detection` block.
type OutlierDetection struct {
	Consecutive5xx           *uint32
	ConsecutiveGatewayErrors *uint32
	// FailurePercentage ejects an endpoint whose share of failed requests
	// over an interval reaches this percentage (the algorithm proxyless gRPC
	// implements).
	FailurePercentage  *uint32
	MinRequests        uint32
	Interval           time.Duration
	BaseEjectionTime   time.Duration
	MaxEjectionPercent *uint32
	DeclRange          hcl.Range
}

// Subset is a `subset` block: the endpoints of a service whose labels match.
type Subset struct {
	Service   ServiceRef
	Name      string
	Labels    map[string]string
	DeclRange hcl.Range
}

// Route is a `route` block: ordered rules for calls to a service.
type Route struct {
	Service   ServiceRef
	Rules     []*RouteRule
	DeclRange hcl.Range
}

// RouteRule is one `rule` of a route: the first rule whose match applies
// decides.
type RouteRule struct {
	Match           *RouteMatch
	Destination     *Destination
	Splits          []*Split
	Redirect        *Redirect
	Rewrite         *Rewrite
	RequestHeaders  *HeaderOps
	ResponseHeaders *HeaderOps
	Timeout         time.Duration
	Retries         *RetryPolicy
	Mirror          *Mirror
	Fault           *Fault
	DeclRange       hcl.Range
}

// RouteMatch is a rule's `match` block; every condition must hold.
type RouteMatch struct {
	PathExact  string
	PathPrefix string
	PathRegex  string
	Methods    []string
	Headers    []*HeaderMatch
	Query      []*QueryMatch
	DeclRange  hcl.Range
}

// CatchAll reports whether the match applies to every request.
func (m *RouteMatch) CatchAll() bool {
	return m == nil || (m.PathExact == "" && m.PathRegex == "" && (m.PathPrefix == "" || m.PathPrefix == "/") &&
		len(m.Methods) == 0 && len(m.Headers) == 0 && len(m.Query) == 0)
}

// HeaderMatch is a `header "name"` block.
type HeaderMatch struct {
	Name      string
	Exact     string
	Prefix    string
	Regex     string
	Present   bool
	Invert    bool
	DeclRange hcl.Range
}

// QueryMatch is a `query "name"` block.
type QueryMatch struct {
	Name      string
	Exact     string
	Regex     string
	Present   bool
	DeclRange hcl.Range
}

// Destination is where a rule sends requests: a service (default: the
// route's) and optionally one of its subsets.
type Destination struct {
	Service   ServiceRef
	Subset    string
	DeclRange hcl.Range
}

// Split is one weighted destination of a rule.
type Split struct {
	Destination
	Weight uint32
}

// Redirect answers with an HTTP redirect.
type Redirect struct {
	Host      string
	Path      string
	Prefix    string
	Code      int
	HTTPS     bool
	DeclRange hcl.Range
}

// Rewrite changes the request before it is forwarded.
type Rewrite struct {
	Prefix    string
	Host      string
	DeclRange hcl.Range
}

// HeaderOps adds, sets or removes headers.
type HeaderOps struct {
	Add       map[string]string
	Set       map[string]string
	Remove    []string
	DeclRange hcl.Range
}

// Mirror copies a share of the requests to another destination, ignoring its answers.
type Mirror struct {
	Destination
	Percent float64
}

// Fault injects delays and errors into a share of the requests.
type Fault struct {
	Delay     *FaultDelay
	Abort     *FaultAbort
	DeclRange hcl.Range
}

// FaultDelay delays requests by a fixed time.
type FaultDelay struct {
	Fixed     time.Duration
	Percent   float64
	DeclRange hcl.Range
}

// FaultAbort fails requests with an HTTP status or a gRPC status.
type FaultAbort struct {
	HTTPStatus int
	GRPCStatus string
	Percent    float64
	DeclRange  hcl.Range
}

// Traffic gathers the traffic rules of a configuration, by service.
type Traffic struct {
	Defaults map[ServiceRef]*ServiceDefaults
	Subsets  map[ServiceRef][]*Subset
	Routes   map[ServiceRef]*Route
}

// Subset returns a subset of a service by name.
func (t *Traffic) Subset(svc ServiceRef, name string) (*Subset, bool) {
	if t == nil {
		return nil, false
	}
	for _, s := range t.Subsets[svc] {
		if s.Name == name {
			return s, true
		}
	}
	return nil, false
}
