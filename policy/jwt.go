package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/bowlinemesh/bowline/config"
)

// End-user authentication as policyd does it: the token is found where the
// jwt blocks say (Envoy's defaults otherwise), its signature checked against
// the issuer's key set, its issuer, audiences, exp and nbf (with
// JWTClockSkew) checked the way Envoy's jwt_authn filter does, and its
// claims handed to the rules (Request.Claims).

// The authentication failures; each is an HTTP 401.
var (
	ErrJWTMissing = errors.New("Jwt is missing")
	ErrJWTInvalid = errors.New("Jwt verification fails")
)

// jwtAlgorithms are the signature algorithms Envoy's jwt_authn accepts.
var jwtAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA, jose.HS256, jose.HS384, jose.HS512,
}

// KeySource returns the key set served at a jwks_uri (policyd fetches and
// caches them).
type KeySource interface {
	Keys(uri string, cache time.Duration) (*jose.JSONWebKeySet, error)
}

// JWTVerifier authenticates the end users of one service.
type JWTVerifier struct {
	providers []*jwtProvider
}

type jwtProvider struct {
	decl   *config.JWTDecl
	keys   *jose.JSONWebKeySet // inline or file key sets
	remote KeySource
}

// NewJWTVerifier returns the verifier of a service's jwt blocks, nil when it
// has none. remote may be nil when no block has a jwks_uri.
func NewJWTVerifier(decls []*config.JWTDecl, remote KeySource) (*JWTVerifier, error) {
	if len(decls) == 0 {
		return nil, nil
	}
	v := &JWTVerifier{}
	for _, d := range decls {
		p := &jwtProvider{decl: d, remote: remote}
		if d.JWKSURI == "" {
			var ks jose.JSONWebKeySet
			if err := json.Unmarshal([]byte(d.JWKS), &ks); err != nil {
				return nil, fmt.Errorf("jwt %s: key set: %w", d.ID, err)
			}
			p.keys = &ks
		}
		v.providers = append(v.providers, p)
	}
	return v, nil
}

// Verify finds a token in the request (headers by lower-case name, and the
// path's query) and returns its verified claims. A request that carries a
// token for none of the providers is ErrJWTMissing; one whose token fails is
// ErrJWTInvalid (wrapping why).
func (v *JWTVerifier) Verify(headers map[string]string, path string, now time.Time) (map[string]any, error) {
	var query url.Values
	found := false
	var lastErr error
	for _, p := range v.providers {
		hs, params := p.decl.TokenSources()
		var tokens []string
		for _, h := range hs {
			if val, ok := headers[h.Name]; ok && strings.HasPrefix(val, h.Prefix) && len(val) > len(h.Prefix) {
				tokens = append(tokens, val[len(h.Prefix):])
			}
		}
		if len(params) > 0 {
			if query == nil {
				query = url.Values{}
				if i := strings.IndexByte(path, '?'); i >= 0 {
					query, _ = url.ParseQuery(path[i+1:])
				}
			}
			for _, name := range params {
				if t := query.Get(name); t != "" {
					tokens = append(tokens, t)
				}
			}
		}
		for _, t := range tokens {
			found = true
			claims, err := p.verify(t, now)
			if err == nil {
				return claims, nil
			}
			lastErr = err
		}
	}
	if !found {
		return nil, ErrJWTMissing
	}
	return nil, fmt.Errorf("%w: %v", ErrJWTInvalid, lastErr)
}

func (p *jwtProvider) verify(token string, now time.Time) (map[string]any, error) {
	tok, err := jwt.ParseSigned(token, jwtAlgorithms)
	if err != nil {
		return nil, err
	}
	var unverified map[string]any
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return nil, err
	}
	if iss, _ := unverified["iss"].(string); iss != p.decl.Issuer {
		return nil, fmt.Errorf("issuer %q is not %q", iss, p.decl.Issuer)
	}
	keys := p.keys
	if keys == nil {
		if p.remote == nil {
			return nil, errors.New("no key source")
		}
		if keys, err = p.remote.Keys(p.decl.JWKSURI, p.decl.CacheDuration); err != nil {
			return nil, fmt.Errorf("key set: %w", err)
		}
	}
	candidates := keys.Keys
	if len(tok.Headers) > 0 && tok.Headers[0].KeyID != "" {
		candidates = keys.Key(tok.Headers[0].KeyID)
	}
	var claims map[string]any
	verified := false
	for _, k := range candidates {
		if err := tok.Claims(k.Key, &claims); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, errors.New("no key of the issuer verifies the signature")
	}
	if aud := p.decl.Audiences; len(aud) > 0 && !audienceMatches(claims["aud"], aud) {
		return nil, errors.New("audience not allowed")
	}
	if exp, ok := claims["exp"].(float64); ok && now.After(unix(exp).Add(JWTClockSkew)) {
		return nil, errors.New("expired")
	}
	if nbf, ok := claims["nbf"].(float64); ok && now.Before(unix(nbf).Add(-JWTClockSkew)) {
		return nil, errors.New("not yet valid")
	}
	return claims, nil
}

func unix(f float64) time.Time { return time.Unix(int64(f), 0) }

func audienceMatches(aud any, allowed []string) bool {
	switch a := aud.(type) {
	case string:
		return slices.Contains(allowed, a)
	case []any:
		for _, e := range a {
			if s, ok := e.(string); ok && slices.Contains(allowed, s) {
				return true
			}
		}
	}
	return false
}
