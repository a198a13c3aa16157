package attest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/bowlinemesh/bowline/identity"
)

// jwtAlgorithms are the signature algorithms accepted in workload JWTs:
// RS256 is what Nomad 1.7 and later sign with, EdDSA what Nomad 1.4 to 1.6
// sign with, RS256 and ES256 what Kubernetes signs with. Never "none", never
// HMAC.
var jwtAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// parseJWT parses a compact JWS without verifying it; the payload's claims
// are decoded into out (each a struct or a map) for a first look.
func parseJWT(token string, out ...any) (*jwt.JSONWebToken, error) {
	tok, err := jwt.ParseSigned(token, jwtAlgorithms)
	if err != nil {
		return nil, fmt.Errorf("%w: not a signed JWT", identity.ErrUnproven)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: the JWT has %d signatures, want 1", identity.ErrUnproven, len(tok.Headers))
	}
	if err := tok.UnsafeClaimsWithoutVerification(out...); err != nil {
		return nil, fmt.Errorf("%w: the JWT's claims do not decode", identity.ErrUnproven)
	}
	return tok, nil
}

// JWKS refresh bounds: keys are read again after jwksMaxAge, and at most
// every jwksMinRefresh when a token names a key not yet known (a new key of
// a rotated keyring).
const (
	jwksMaxAge     = 5 * time.Minute
	jwksMinRefresh = 5 * time.Second
	maxJWKSBytes   = 1 << 20
)

// jwks caches a JSON Web Key Set read over HTTP.
type jwks struct {
	url  string
	http *http.Client
	now  func() time.Time

	mu      sync.Mutex
	set     jose.JSONWebKeySet
	fetched time.Time
}

// key returns the key with the ID kid. A set that cannot be read is an
// undecided claim (the error does not wrap ErrUnproven); a key that the
// set, freshly read, does not hold is an unproven one.
func (j *jwks) key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	now := j.now()
	fresh := !j.fetched.IsZero() && now.Sub(j.fetched) < jwksMaxAge
	if k := j.find(kid); k != nil && fresh {
		return k, nil
	}
	if !fresh || now.Sub(j.fetched) >= jwksMinRefresh {
		if err := j.fetch(ctx); err != nil {
			if k := j.find(kid); k != nil && now.Sub(j.fetched) < 2*jwksMaxAge {
				return k, nil // a short outage: keep what was read recently
			}
			return nil, err
		}
		j.fetched = now
	}
	if k := j.find(kid); k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("%w: the JWT is signed with key %q, which %s does not hold", identity.ErrUnproven, kid, j.url)
}

func (j *jwks) find(kid string) *jose.JSONWebKey {
	for _, k := range j.set.Key(kid) {
		if k.Valid() && k.IsPublic() && (k.Use == "" || k.Use == "sig") {
			return &k
		}
	}
	return nil
}

func (j *jwks) fetch(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return fmt.Errorf("attest: JWKS %s: %w", j.url, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.http.Do(req)
	if err != nil {
		return fmt.Errorf("attest: JWKS %s: %w", j.url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes))
	if err != nil {
		return fmt.Errorf("attest: JWKS %s: %w", j.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("attest: JWKS %s: %s", j.url, resp.Status)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		return fmt.Errorf("attest: JWKS %s: decode: %w", j.url, err)
	}
	j.set = set
	return nil
}
