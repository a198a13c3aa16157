package translate

import (
	"slices"
	"strings"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bowlinemesh/bowline/discovery"
)

// FaultFilter is the name of Envoy's (and gRPC's) HTTP fault filter.
const FaultFilter = "envoy.filters.http.fault"

// filterOptions selects the HTTP filters of one connection manager.
type filterOptions struct {
	// inbound is true for the sidecar's inbound listener, where the policy of
	// the destination (RBAC, ext_authz, rate limits) is enforced.
	inbound bool
	// fault adds the fault filter, which routes configure per rule.
	fault bool
	// tel is the access log and tracing of the connection manager
	// (accesslog.go); nil: none.
	tel *telemetry
}

// outboundFilters are the filters for calls to a service.
func (b *builder) outboundFilters(k discovery.ServiceKey) filterOptions {
	r := b.route(k)
	if r == nil {
		return filterOptions{}
	}
	for _, rule := range r.Rules {
		if rule.Fault != nil {
			return filterOptions{fault: true}
		}
	}
	return filterOptions{}
}

// httpFilters builds the HTTP filter chain. The order is Envoy's order of
// evaluation and is fixed here for every later filter:
//
//  1. fault injection        (outbound: traffic rules; configured per route)
//  2. jwt_authn              (inbound: end-user authentication)
//  3. rbac                   (inbound: authorization in the proxy)
//  4. ext_authz              (inbound: authorization in policyd)
//  5. local_ratelimit        (inbound: per-proxy token buckets)
//  6. ratelimit              (inbound: global limits in policyd)
//  7. router                 (always last)
func httpFilters(opts filterOptions) []*hcm.HttpFilter {
	var filters []*hcm.HttpFilter
	if opts.fault {
		// Empty here: each route that injects faults overrides it with its
		// own configuration (typed_per_filter_config).
		filters = append(filters, typedFilter(FaultFilter, &faultv3.HTTPFault{}))
	}
	_ = opts.inbound // the policy filters are added in slots 2-6 when configured
	filters = append(filters, typedFilter(wellknown.Router, &router.Router{}))
	return filters
}

// httpFilterSlots are the places of httpFilters' list, by filter config type.
var httpFilterSlots = map[string]int{
	"envoy.extensions.filters.http.fault.v3.HTTPFault":                1,
	"envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication":    2,
	"envoy.extensions.filters.http.rbac.v3.RBAC":                      3,
	"envoy.extensions.filters.http.ext_authz.v3.ExtAuthz":             4,
	"envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": 5,
	"envoy.extensions.filters.http.header_to_metadata.v3.Config":      6, // the caller's identity, for the rate limit filter (ratelimit.go)
	"envoy.extensions.filters.http.ratelimit.v3.RateLimit":            6,
	"envoy.extensions.filters.http.router.v3.Router":                  7,
}

func httpFilterSlot(f *hcm.HttpFilter) int {
	u := f.GetTypedConfig().GetTypeUrl()
	if i := strings.LastIndexByte(u, '/'); i >= 0 {
		u = u[i+1:]
	}
	if s, ok := httpFilterSlots[u]; ok {
		return s
	}
	return 7
}

// placeHTTPFilters inserts filters into a chain at their places (after the
// filters of the same place already there).
func placeHTTPFilters(chain []*hcm.HttpFilter, add ...*hcm.HttpFilter) []*hcm.HttpFilter {
	for _, f := range add {
		slot := httpFilterSlot(f)
		i := slices.IndexFunc(chain, func(g *hcm.HttpFilter) bool { return httpFilterSlot(g) > slot })
		if i < 0 {
			i = len(chain)
		}
		chain = slices.Insert(chain, i, f)
	}
	return chain
}

func typedFilter(name string, cfg proto.Message) *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: name, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// mustAny packs a message; packing a generated message cannot fail.
func mustAny(m proto.Message) *anypb.Any {
	// Deterministic: maps (RBAC policies, context extensions) must pack to
	// the same bytes every time, or content versions would change.
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic("translate: pack " + string(proto.MessageName(m)) + ": " + err.Error())
	}
	return a
}
