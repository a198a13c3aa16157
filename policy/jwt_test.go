package policy

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/bowlinemesh/bowline/config"
)

// testIssuer signs tokens with an RSA key whose public half is in its JWKS.
type testIssuer struct {
	key  *rsa.PrivateKey
	kid  string
	jwks string
}

func newTestIssuer(t testing.TB, kid string) *testIssuer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: kid, Algorithm: string(jose.RS256), Use: "sig"}}}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return &testIssuer{key: k, kid: kid, jwks: string(b)}
}

func (i *testIssuer) sign(t testing.TB, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: i.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", i.kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestJWTVerify(t *testing.T) {
	iss := newTestIssuer(t, "k1")
	other := newTestIssuer(t, "k1")
	now := time.Unix(1_800_000_000, 0)
	decl := &config.JWTDecl{ID: "default/orders/0", Issuer: "https://issuer.test", Audiences: []string{"orders"}, JWKS: iss.jwks}
	v, err := NewJWTVerifier([]*config.JWTDecl{decl}, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := map[string]any{"iss": "https://issuer.test", "aud": "orders", "sub": "alice", "exp": now.Add(time.Hour).Unix(), "group": "admins"}
	with := func(k string, val any) map[string]any {
		c := map[string]any{}
		for kk, vv := range good {
			c[kk] = vv
		}
		if val == nil {
			delete(c, k)
		} else {
			c[k] = val
		}
		return c
	}
	bearer := func(tok string) map[string]string { return map[string]string{"authorization": "Bearer " + tok} }
	for _, c := range []struct {
		name    string
		headers map[string]string
		path    string
		err     error
	}{
		{"valid", bearer(iss.sign(t, good)), "/", nil},
		{"audience in a list", bearer(iss.sign(t, with("aud", []string{"x", "orders"}))), "/", nil},
		{"no exp", bearer(iss.sign(t, with("exp", nil))), "/", nil},
		{"expired within the clock skew", bearer(iss.sign(t, with("exp", now.Add(-30*time.Second).Unix()))), "/", nil},
		{"in the query", nil, "/api?access_token=" + iss.sign(t, good), nil},
		{"expired", bearer(iss.sign(t, with("exp", now.Add(-2*time.Minute).Unix()))), "/", ErrJWTInvalid},
		{"not yet valid", bearer(iss.sign(t, with("nbf", now.Add(2*time.Minute).Unix()))), "/", ErrJWTInvalid},
		{"wrong issuer", bearer(iss.sign(t, with("iss", "https://evil.test"))), "/", ErrJWTInvalid},
		{"wrong audience", bearer(iss.sign(t, with("aud", "payments"))), "/", ErrJWTInvalid},
		{"no audience", bearer(iss.sign(t, with("aud", nil))), "/", ErrJWTInvalid},
		{"signed by another key", bearer(other.sign(t, good)), "/", ErrJWTInvalid},
		{"garbage", bearer("a.b.c"), "/", ErrJWTInvalid},
		{"missing", nil, "/", ErrJWTMissing},
		{"another scheme", map[string]string{"authorization": "Basic YTpi"}, "/", ErrJWTMissing},
	} {
		claims, err := v.Verify(c.headers, c.path, now)
		if !errors.Is(err, c.err) || (err == nil) != (c.err == nil) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.err)
		}
		if err == nil && claims["group"] != "admins" {
			t.Errorf("%s: claims = %v", c.name, claims)
		}
	}

	// A custom header, and two issuers.
	second := newTestIssuer(t, "k2")
	v, err = NewJWTVerifier([]*config.JWTDecl{
		{ID: "a", Issuer: "https://issuer.test", JWKS: iss.jwks, FromHeaders: []config.JWTHeader{{Name: "x-jwt"}}},
		{ID: "b", Issuer: "https://second.test", JWKS: second.jwks, FromHeaders: []config.JWTHeader{{Name: "x-jwt"}}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{iss.sign(t, with("aud", nil)), second.sign(t, with("iss", "https://second.test"))} {
		if _, err := v.Verify(map[string]string{"x-jwt": tok}, "/", now); err != nil {
			t.Errorf("custom header: %v", err)
		}
	}
	if _, err := v.Verify(bearer(iss.sign(t, good)), "/", now); !errors.Is(err, ErrJWTMissing) {
		t.Errorf("the default header is not looked at once from_header is set: %v", err)
	}
}
