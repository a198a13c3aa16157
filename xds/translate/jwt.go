package translate

import (
	"net"
	"net/url"
	"slices"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtauthn "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/policy"
)

// End-user authentication: the jwt blocks of a service compile to Envoy's
// jwt_authn filter on its sidecar's inbound listener (place 2 of
// filters.go). A request needs a valid token from one of the providers
// (missing or invalid: 401); the verified payload goes to dynamic metadata
// (policy.JWTFilter / policy.JWTPayloadKey), where the RBAC filters read
// claims.

// JWTFilterName is the jwt_authn filter's name.
const JWTFilterName = policy.JWTFilter

// SystemCABundle verifies the HTTPS servers that serve remote key sets.
const SystemCABundle = "/etc/ssl/certs/ca-certificates.crt"

// jwksClusterName names the cluster that reaches a jwks_uri's host.
func jwksClusterName(hostPort string) string { return "jwks|" + hostPort }

// jwtFilter builds the jwt_authn filter of a service and the clusters its
// remote key sets need.
func jwtFilter(decls []*config.JWTDecl) (*hcm.HttpFilter, []*cluster.Cluster) {
	cfg := &jwtauthn.JwtAuthentication{Providers: map[string]*jwtauthn.JwtProvider{}}
	var names []string
	var clusters []*cluster.Cluster
	seen := map[string]bool{}
	for _, d := range decls {
		p := &jwtauthn.JwtProvider{
			Issuer: d.Issuer, Audiences: d.Audiences, Forward: d.Forward,
			PayloadInMetadata: policy.JWTPayloadKey,
			ClockSkewSeconds:  uint32(policy.JWTClockSkew / time.Second),
		}
		headers, params := d.TokenSources()
		for _, h := range headers {
			p.FromHeaders = append(p.FromHeaders, &jwtauthn.JwtHeader{Name: h.Name, ValuePrefix: h.Prefix})
		}
		p.FromParams = params
		if d.JWKSURI != "" {
			u, _ := url.Parse(d.JWKSURI) // checked by config
			host, port := u.Hostname(), u.Port()
			if port == "" {
				port = "443"
			}
			name := jwksClusterName(net.JoinHostPort(host, port))
			p.JwksSourceSpecifier = &jwtauthn.JwtProvider_RemoteJwks{RemoteJwks: &jwtauthn.RemoteJwks{
				HttpUri:       &core.HttpUri{Uri: d.JWKSURI, HttpUpstreamType: &core.HttpUri_Cluster{Cluster: name}, Timeout: durationpb.New(5 * time.Second)},
				CacheDuration: durationpb.New(d.CacheDuration),
				AsyncFetch:    &jwtauthn.JwksAsyncFetch{},
			}}
			if !seen[name] {
				seen[name] = true
				c := hostPortCluster(name, net.JoinHostPort(host, port), discovery.ProtocolHTTP)
				// A public HTTPS server: the system's CAs, and its host name
				// (Envoy checks no name unless told to).
				c.TransportSocket = transportSocket(&tlsv3.UpstreamTlsContext{Sni: host, CommonTlsContext: &tlsv3.CommonTlsContext{
					ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
						TrustedCa: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: SystemCABundle}},
						MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
							SanType: tlsv3.SubjectAltNameMatcher_DNS,
							Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: host}},
						}},
					}},
				}})
				clusters = append(clusters, c)
			}
		} else {
			p.JwksSourceSpecifier = &jwtauthn.JwtProvider_LocalJwks{LocalJwks: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: d.JWKS}}}
		}
		cfg.Providers[d.ID] = p
		names = append(names, d.ID)
	}
	slices.Sort(names)
	var req *jwtauthn.JwtRequirement
	if len(names) == 1 {
		req = &jwtauthn.JwtRequirement{RequiresType: &jwtauthn.JwtRequirement_ProviderName{ProviderName: names[0]}}
	} else {
		var any []*jwtauthn.JwtRequirement
		for _, n := range names {
			any = append(any, &jwtauthn.JwtRequirement{RequiresType: &jwtauthn.JwtRequirement_ProviderName{ProviderName: n}})
		}
		req = &jwtauthn.JwtRequirement{RequiresType: &jwtauthn.JwtRequirement_RequiresAny{RequiresAny: &jwtauthn.JwtRequirementOrList{Requirements: any}}}
	}
	cfg.Rules = []*jwtauthn.RequirementRule{{
		Match:           &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		RequirementType: &jwtauthn.RequirementRule_Requires{Requires: req},
	}}
	slices.SortFunc(clusters, func(a, b *cluster.Cluster) int { return compareStrings(a.GetName(), b.GetName()) })
	return typedFilter(JWTFilterName, cfg), clusters
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
