package translate

import (
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

func typedFilter(name string, cfg proto.Message) *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: name, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// mustAny packs a message; packing a generated message cannot fail.
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic("translate: pack " + string(proto.MessageName(m)) + ": " + err.Error())
	}
	return a
}
