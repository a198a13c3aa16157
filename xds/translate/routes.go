package translate

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// buildRouteConfig is the route configuration for calls to a service: one
// virtual host matching any authority (the listener already chose the
// service) with the route block's rules in order, then a default route to the
// whole service unless the last rule already catches everything.
func (b *builder) buildRouteConfig(svc *discovery.Service) *route.RouteConfiguration {
	name := RouteName(svc.ServiceKey)
	d := b.defaults(svc.ServiceKey)
	var routes []*route.Route
	catchAll := false
	if r := b.route(svc.ServiceKey); r != nil {
		for i, rule := range r.Rules {
			routes = append(routes, b.buildRoute(svc, d, rule, fmt.Sprintf("rule-%d", i)))
			catchAll = rule.Match.CatchAll()
		}
	}
	if !catchAll {
		routes = append(routes, b.buildRoute(svc, d, &config.RouteRule{Destination: &config.Destination{Service: ref(svc.ServiceKey)}}, "default"))
	}
	return &route.RouteConfiguration{
		Name: name,
		VirtualHosts: []*route.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes:  routes,
		}},
	}
}

func ref(k discovery.ServiceKey) config.ServiceRef {
	return config.ServiceRef{Namespace: k.Namespace, Name: k.Name}
}

func key(r config.ServiceRef) discovery.ServiceKey {
	return discovery.ServiceKey{Namespace: r.Namespace, Name: r.Name}
}

// clusterFor names the cluster of a destination and makes sure the proxy
// gets it.
func (b *builder) clusterFor(d config.Destination) string {
	return b.useCluster(key(d.Service), d.Subset)
}

func (b *builder) buildRoute(svc *discovery.Service, d *config.ServiceDefaults, rule *config.RouteRule, name string) *route.Route {
	r := &route.Route{Name: name, Match: routeMatch(rule.Match)}
	if rule.Redirect != nil {
		r.Action = &route.Route_Redirect{Redirect: redirect(rule.Redirect)}
		return r
	}
	a := &route.RouteAction{}
	switch {
	case len(rule.Splits) > 0:
		wc := &route.WeightedCluster{}
		for _, s := range rule.Splits {
			if s.Weight == 0 {
				continue // a split at 0% sends nothing; Envoy rejects zero weights
			}
			wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{Name: b.clusterFor(s.Destination), Weight: wrapperspb.UInt32(s.Weight)})
		}
		a.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	default:
		dest := rule.Destination
		if dest == nil {
			dest = &config.Destination{Service: ref(svc.ServiceKey)}
		}
		a.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: b.clusterFor(*dest)}
	}

	// Timeouts: Envoy reads timeout, proxyless gRPC max_stream_duration. gRPC
	// streams may live long, so gRPC services have no default timeout.
	timeout := rule.Timeout
	if timeout == 0 && d != nil {
		timeout = d.RequestTimeout
	}
	switch {
	case timeout > 0:
		a.Timeout = durationpb.New(timeout)
		a.MaxStreamDuration = &route.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(timeout)}
	case svc.Protocol == discovery.ProtocolGRPC:
		a.Timeout = durationpb.New(0)
	}
	retries := rule.Retries
	if retries == nil && d != nil {
		retries = d.Retries
	}
	if retries != nil {
		a.RetryPolicy = retryPolicy(retries)
	}
	if d != nil && d.LoadBalancer != nil {
		a.HashPolicy = hashPolicies(d.LoadBalancer.Hash)
	}
	if rw := rule.Rewrite; rw != nil {
		a.PrefixRewrite = rw.Prefix
		if rw.Host != "" {
			a.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: rw.Host}
		}
	}
	if m := rule.Mirror; m != nil {
		a.RequestMirrorPolicies = []*route.RouteAction_RequestMirrorPolicy{{
			Cluster:         b.clusterFor(m.Destination),
			RuntimeFraction: &core.RuntimeFractionalPercent{DefaultValue: percent(m.Percent)},
		}}
	}
	r.Action = &route.Route_Route{Route: a}
	if h := rule.RequestHeaders; h != nil {
		r.RequestHeadersToAdd, r.RequestHeadersToRemove = headerOps(h)
	}
	if h := rule.ResponseHeaders; h != nil {
		r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = headerOps(h)
	}
	if f := rule.Fault; f != nil {
		r.TypedPerFilterConfig = map[string]*anypb.Any{FaultFilter: mustAny(httpFault(f))}
	}
	return r
}

// routeMatch compiles a rule's conditions (nil: every request).
func routeMatch(m *config.RouteMatch) *route.RouteMatch {
	rm := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if m == nil {
		return rm
	}
	switch {
	case m.PathExact != "":
		rm.PathSpecifier = &route.RouteMatch_Path{Path: m.PathExact}
	case m.PathPrefix != "":
		rm.PathSpecifier = &route.RouteMatch_Prefix{Prefix: m.PathPrefix}
	case m.PathRegex != "":
		rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: m.PathRegex}}
	}
	if len(m.Methods) == 1 {
		rm.Headers = append(rm.Headers, &route.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{
			StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: m.Methods[0]}}}})
	} else if len(m.Methods) > 1 {
		quoted := make([]string, len(m.Methods))
		for i, meth := range m.Methods {
			quoted[i] = regexp.QuoteMeta(meth)
		}
		rm.Headers = append(rm.Headers, &route.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{
			StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "^(" + strings.Join(quoted, "|") + ")$"}}}}})
	}
	for _, h := range m.Headers {
		hm := &route.HeaderMatcher{Name: h.Name, InvertMatch: h.Invert}
		if h.Present {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
		} else {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: stringMatcher(h.Exact, h.Prefix, h.Regex)}
		}
		rm.Headers = append(rm.Headers, hm)
	}
	for _, q := range m.Query {
		qm := &route.QueryParameterMatcher{Name: q.Name}
		if q.Present {
			qm.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		} else {
			qm.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_StringMatch{StringMatch: stringMatcher(q.Exact, "", q.Regex)}
		}
		rm.QueryParameters = append(rm.QueryParameters, qm)
	}
	return rm
}

func stringMatcher(exact, prefix, regex string) *matcher.StringMatcher {
	switch {
	case prefix != "":
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: prefix}}
	case regex != "":
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: regex}}}
	default:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: exact}}
	}
}

// retryPolicy compiles a retries block. attempts counts retries after the
// first try, as Envoy's num_retries does.
func retryPolicy(r *config.RetryPolicy) *route.RetryPolicy {
	rp := &route.RetryPolicy{RetryOn: strings.Join(r.RetryOn, ","), NumRetries: wrapperspb.UInt32(r.Attempts)}
	if r.PerTryTimeout > 0 {
		rp.PerTryTimeout = durationpb.New(r.PerTryTimeout)
	}
	return rp
}

func hashPolicies(keys []config.HashKey) []*route.RouteAction_HashPolicy {
	var out []*route.RouteAction_HashPolicy
	for _, h := range keys {
		switch {
		case h.Header != "":
			out = append(out, &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_Header_{Header: &route.RouteAction_HashPolicy_Header{HeaderName: h.Header}}})
		case h.Cookie != "":
			c := &route.RouteAction_HashPolicy_Cookie{Name: h.Cookie}
			if h.CookieTTL > 0 {
				c.Ttl = durationpb.New(h.CookieTTL)
			}
			out = append(out, &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_Cookie_{Cookie: c}})
		case h.SourceIP:
			out = append(out, &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_ConnectionProperties_{
				ConnectionProperties: &route.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}})
		}
	}
	return out
}

func redirect(r *config.Redirect) *route.RedirectAction {
	ra := &route.RedirectAction{HostRedirect: r.Host}
	switch r.Code {
	case 302:
		ra.ResponseCode = route.RedirectAction_FOUND
	case 303:
		ra.ResponseCode = route.RedirectAction_SEE_OTHER
	case 307:
		ra.ResponseCode = route.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		ra.ResponseCode = route.RedirectAction_PERMANENT_REDIRECT
	default:
		ra.ResponseCode = route.RedirectAction_MOVED_PERMANENTLY
	}
	if r.Path != "" {
		ra.PathRewriteSpecifier = &route.RedirectAction_PathRedirect{PathRedirect: r.Path}
	} else if r.Prefix != "" {
		ra.PathRewriteSpecifier = &route.RedirectAction_PrefixRewrite{PrefixRewrite: r.Prefix}
	}
	if r.HTTPS {
		ra.SchemeRewriteSpecifier = &route.RedirectAction_HttpsRedirect{HttpsRedirect: true}
	}
	return ra
}

func headerOps(h *config.HeaderOps) ([]*core.HeaderValueOption, []string) {
	var add []*core.HeaderValueOption
	for _, k := range slices.Sorted(maps.Keys(h.Add)) {
		add = append(add, &core.HeaderValueOption{Header: &core.HeaderValue{Key: k, Value: h.Add[k]}, AppendAction: core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD})
	}
	for _, k := range slices.Sorted(maps.Keys(h.Set)) {
		add = append(add, &core.HeaderValueOption{Header: &core.HeaderValue{Key: k, Value: h.Set[k]}, AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	return add, slices.Clone(h.Remove)
}

// grpcCodes maps gRPC status names to their numbers.
var grpcCodes = map[string]uint32{
	"CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "ALREADY_EXISTS": 6,
	"PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11,
	"UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

func httpFault(f *config.Fault) *faultv3.HTTPFault {
	out := &faultv3.HTTPFault{}
	if d := f.Delay; d != nil {
		out.Delay = &faultcommon.FaultDelay{
			FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.Fixed)},
			Percentage:         percent(d.Percent),
		}
	}
	if a := f.Abort; a != nil {
		fa := &faultv3.FaultAbort{Percentage: percent(a.Percent)}
		if a.GRPCStatus != "" {
			fa.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: grpcCodes[a.GRPCStatus]}
		} else {
			fa.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(a.HTTPStatus)}
		}
		out.Abort = fa
	}
	return out
}

// clusterRoute sends every request to one cluster. gRPC streams may live
// long, so gRPC routes have no overall timeout.
func clusterRoute(cluster string, proto discovery.Protocol) *route.Route {
	action := &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: cluster}}
	if proto == discovery.ProtocolGRPC {
		action.Timeout = durationpb.New(0)
	}
	return &route.Route{
		Name:   "default",
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: action},
	}
}
