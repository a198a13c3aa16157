package translate

import (
	"fmt"
	"regexp"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	ratelimitconf "github.com/envoyproxy/go-control-plane/envoy/config/ratelimit/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonrl "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	h2m "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_to_metadata/v3"
	localrl "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// Rate limits are applied once, after authorization (rateLimit), to an
// Envoy sidecar's inbound listener:
//
//   - a local block becomes the local rate limit filter (place 5 of
//     filters.go): one token bucket per sidecar, refilled every period;
//   - global blocks become the rate limit filter (place 6), which asks
//     policyd (PolicydCluster) in domain "bowline", with one rate limit
//     action list per block on the inbound routes. Each list makes the
//     descriptor of the wire contract (policy/ratelimit/doc.go):
//     destination = <namespace>/<service> (a generic key, or a header value
//     match when the block has a match, so that the descriptor is only sent
//     for requests that match), then one entry per by attribute.
//
// The caller's identity comes from its mTLS certificate: the connection
// manager sets x-forwarded-client-cert (SANITIZE_SET, so a caller cannot
// forge it) and a header_to_metadata filter, just before the rate limit
// filter, cuts the SPIFFE ID and "<namespace>/<service>" out of it into
// dynamic metadata, which the actions read. A request without a peer
// certificate has no identity and is not counted by limits by source.
//
// xDS-enabled gRPC servers have neither filter; config warns about it.

// Names of what rate limiting adds.
const (
	LocalRateLimitFilter   = "envoy.filters.http.local_ratelimit"
	RateLimitFilter        = "envoy.filters.http.ratelimit"
	HeaderToMetadataFilter = "envoy.filters.http.header_to_metadata"
	// RateLimitMetadata is the dynamic metadata namespace of the caller's
	// identity: keys "source" and "principal".
	RateLimitMetadata = "bowline.ratelimit"
	xfccHeader        = "x-forwarded-client-cert"
)

// The rewrites of x-forwarded-client-cert (By=...;Hash=...;URI=<peer ID>)
// into the caller's identity. Each matches every value and yields "" when
// the value holds no mesh identity, so that no metadata is set then.
var (
	xfccSourceRewrite    = `^(?:(?:.*;)?URI=spiffe://[^/;,"]+/ns/([^/;,"]+)/(?:svc|sa)(/[^/;,"]+)(?:[;,].*)?|.*)$`
	xfccSourceSubst      = `\1\2`
	xfccPrincipalRewrite = `^(?:(?:.*;)?URI=(spiffe://[^;,"]+)(?:[;,].*)?|.*)$`
	xfccPrincipalSubst   = `\1`
)

// rateLimit adds the rate limit filters to a sidecar's inbound listener.
func (b *builder) rateLimit() {
	if b.p.Kind != KindSidecar || b.p.Part == PartOutbound || b.in.Config == nil {
		return
	}
	k := b.p.Service
	rl := b.in.Config.RateLimits.For(config.ServiceRef{Namespace: k.Namespace, Name: k.Name})
	if rl == nil {
		return
	}
	i := slices.IndexFunc(b.res.Listeners, func(r types.Resource) bool { return resourceName(r) == inboundListener })
	proto := b.lookup(k).Protocol
	if i < 0 || !proto.IsHTTP() {
		return
	}
	pd := b.in.Config.Mesh.Policyd
	global := len(rl.Global) > 0 && pd != nil
	if !global && rl.Local == nil {
		return
	}
	l := proto2Listener(b.res.Listeners[i])
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			m := &hcm.HttpConnectionManager{}
			if !f.GetTypedConfig().MessageIs(m) || f.GetTypedConfig().UnmarshalTo(m) != nil {
				continue
			}
			if rl.Local != nil {
				m.HttpFilters = placeHTTPFilters(m.HttpFilters, typedFilter(LocalRateLimitFilter, localRateLimit(rl.Local, proto)))
			}
			if global {
				b.globalRateLimit(m, k, rl, proto)
			}
			f.ConfigType = &listener.Filter_TypedConfig{TypedConfig: mustAny(m)}
		}
	}
	b.res.Listeners[i] = l
	if global && !slices.ContainsFunc(b.res.Clusters, func(r types.Resource) bool { return resourceName(r) == PolicydCluster }) {
		b.res.Clusters = append(b.res.Clusters, b.policydCluster(pd))
	}
}

// localRateLimit is a token bucket of Requests tokens, all refilled every
// Per, applied to every request.
func localRateLimit(l *config.LocalLimit, proto discovery.Protocol) *localrl.LocalRateLimit {
	all := &core.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}}
	return &localrl.LocalRateLimit{
		StatPrefix: "inbound_local_rate_limit",
		TokenBucket: &typev3.TokenBucket{
			MaxTokens:     l.Requests,
			TokensPerFill: wrapperspb.UInt32(l.Requests),
			FillInterval:  durationpb.New(l.Per),
		},
		FilterEnabled:                  all,
		FilterEnforced:                 all,
		EnableXRatelimitHeaders:        commonrl.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03,
		RateLimitedAsResourceExhausted: proto == discovery.ProtocolGRPC,
	}
}

// globalRateLimit adds the rate limit filter (and, for limits by source,
// what tells the caller's identity) to a connection manager, and the
// actions to its routes.
func (b *builder) globalRateLimit(m *hcm.HttpConnectionManager, k discovery.ServiceKey, rl *config.RateLimit, proto discovery.Protocol) {
	var limits []*route.RateLimit
	source := false
	for _, g := range rl.Global {
		limits = append(limits, rateLimitActions(k, g))
		for _, key := range g.By {
			source = source || key.Kind == config.KeySourceService || key.Kind == config.KeySourcePrincipal
		}
	}
	for _, vh := range m.GetRouteConfig().GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if a := r.GetRoute(); a != nil {
				a.RateLimits = append(a.RateLimits, limits...)
			}
		}
	}
	if source {
		m.ForwardClientCertDetails = hcm.HttpConnectionManager_SANITIZE_SET
		m.SetCurrentClientCertDetails = &hcm.HttpConnectionManager_SetCurrentClientCertDetails{Uri: true}
		m.HttpFilters = placeHTTPFilters(m.HttpFilters, typedFilter(HeaderToMetadataFilter, identityToMetadata()))
	}
	f := &ratelimitv3.RateLimit{
		Domain:          config.RateLimitDomain,
		Timeout:         durationpb.New(b.in.Config.Mesh.Policyd.Timeout),
		FailureModeDeny: rl.OnError == config.OnErrorDeny,
		RateLimitService: &ratelimitconf.RateLimitServiceConfig{
			GrpcService:         b.policydService(),
			TransportApiVersion: core.ApiVersion_V3,
		},
		RateLimitedAsResourceExhausted: proto == discovery.ProtocolGRPC,
		EnableRetryAfterHeader:         true,
	}
	if f.FailureModeDeny {
		f.StatusOnError = &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable}
	}
	m.HttpFilters = placeHTTPFilters(m.HttpFilters, typedFilter(RateLimitFilter, f))
}

// identityToMetadata copies the caller's identity out of
// x-forwarded-client-cert into dynamic metadata.
func identityToMetadata() *h2m.Config {
	rule := func(key, pattern, subst string) *h2m.Config_Rule {
		return &h2m.Config_Rule{
			Header: xfccHeader,
			OnHeaderPresent: &h2m.Config_KeyValuePair{
				MetadataNamespace: RateLimitMetadata,
				Key:               key,
				Type:              h2m.Config_STRING,
				RegexValueRewrite: &matcher.RegexMatchAndSubstitute{Pattern: &matcher.RegexMatcher{Regex: pattern}, Substitution: subst},
			},
		}
	}
	return &h2m.Config{RequestRules: []*h2m.Config_Rule{
		rule("source", xfccSourceRewrite, xfccSourceSubst),
		rule("principal", xfccPrincipalRewrite, xfccPrincipalSubst),
	}}
}

// rateLimitActions is the action list of one global limit: the descriptor
// entries of the wire contract, in order.
func rateLimitActions(k discovery.ServiceKey, g *config.GlobalLimit) *route.RateLimit {
	dest := &route.RateLimit_Action{ActionSpecifier: &route.RateLimit_Action_GenericKey_{GenericKey: &route.RateLimit_Action_GenericKey{
		DescriptorKey: "destination", DescriptorValue: k.String(),
	}}}
	if g.Matched() {
		dest = &route.RateLimit_Action{ActionSpecifier: &route.RateLimit_Action_HeaderValueMatch_{HeaderValueMatch: &route.RateLimit_Action_HeaderValueMatch{
			DescriptorKey: "destination", DescriptorValue: k.String(),
			ExpectMatch: wrapperspb.Bool(true),
			Headers:     matchHeaders(g.Match),
		}}}
	}
	actions := []*route.RateLimit_Action{dest}
	for _, key := range g.By {
		var a *route.RateLimit_Action
		switch key.Kind {
		case config.KeySourceService, config.KeySourcePrincipal:
			mk := "source"
			if key.Kind == config.KeySourcePrincipal {
				mk = "principal"
			}
			a = &route.RateLimit_Action{ActionSpecifier: &route.RateLimit_Action_Metadata{Metadata: &route.RateLimit_Action_MetaData{
				DescriptorKey: key.DescriptorKey(),
				MetadataKey:   &metadatav3.MetadataKey{Key: RateLimitMetadata, Path: []*metadatav3.MetadataKey_PathSegment{{Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: mk}}}},
				Source:        route.RateLimit_Action_MetaData_DYNAMIC,
			}}}
		case config.KeyPath:
			a = requestHeaderAction(":path", key.DescriptorKey())
		case config.KeyHeader:
			a = requestHeaderAction(key.Header, key.DescriptorKey())
		}
		actions = append(actions, a)
	}
	return &route.RateLimit{Actions: actions}
}

func requestHeaderAction(header, descriptorKey string) *route.RateLimit_Action {
	return &route.RateLimit_Action{ActionSpecifier: &route.RateLimit_Action_RequestHeaders_{RequestHeaders: &route.RateLimit_Action_RequestHeaders{
		HeaderName: header, DescriptorKey: descriptorKey,
	}}}
}

// matchHeaders turns a match into header matchers, which all must hold:
// the path is matched on :path (which carries the query string, allowed
// after the path), methods and headers as routes match them.
func matchHeaders(m *config.RouteMatch) []*route.HeaderMatcher {
	var out []*route.HeaderMatcher
	path := func(sm *matcher.StringMatcher) {
		out = append(out, &route.HeaderMatcher{Name: ":path", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: sm}})
	}
	switch {
	case m.PathExact != "":
		path(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: regexp.QuoteMeta(m.PathExact) + `(\?.*)?`}}})
	case m.PathPrefix != "" && m.PathPrefix != "/":
		path(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: m.PathPrefix}})
	case m.PathRegex != "":
		path(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: `(?:` + m.PathRegex + `)(\?.*)?`}}})
	}
	// Methods and headers exactly as a route rule matches them (routes.go).
	return append(out, routeMatch(&config.RouteMatch{Methods: m.Methods, Headers: m.Headers}).GetHeaders()...)
}

// checkRateLimit verifies that every rate limit filter's cluster exists.
func checkRateLimit(r *Resources, clusters map[string]*cluster.Cluster) []error {
	var errs []error
	for _, res := range r.Listeners {
		l := res.(*listener.Listener)
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				m := &hcm.HttpConnectionManager{}
				if !f.GetTypedConfig().MessageIs(m) || f.GetTypedConfig().UnmarshalTo(m) != nil {
					continue
				}
				for _, hf := range m.GetHttpFilters() {
					x := &ratelimitv3.RateLimit{}
					if !hf.GetTypedConfig().MessageIs(x) || hf.GetTypedConfig().UnmarshalTo(x) != nil {
						continue
					}
					if name := x.GetRateLimitService().GetGrpcService().GetEnvoyGrpc().GetClusterName(); clusters[name] == nil {
						errs = append(errs, fmt.Errorf("listener %q: the rate limit filter refers to cluster %q, which does not exist", l.GetName(), name))
					}
				}
			}
		}
	}
	return errs
}
