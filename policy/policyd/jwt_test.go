package policyd

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
)

func signer(t *testing.T) (*rsa.PrivateKey, string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	return k, string(b)
}

func token(t *testing.T, k *rsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: k}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// End-user authentication in policyd: a token signed by the issuer's key,
// with the right issuer, audience and claims, passes; an expired one, one
// from another issuer or for another audience, and none at all get 401; a
// valid token whose claims the rules refuse gets 403. The key set is served
// over HTTPS (jwks_uri) and, in a second pass, inline.
func TestCheckJWT(t *testing.T) {
	key, jwks := signer(t)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, jwks)
	}))
	defer srv.Close()
	rules := `
authorization "orders" {
  rule {
    action = "allow"
    to { paths = ["/api/*"] }
    when {
      key    = "request.auth.claims[\"group\"]"
      values = ["admins"]
    }
  }
}
`
	for _, keys := range []string{fmt.Sprintf("jwks_uri = %q", srv.URL+"/jwks.json"), fmt.Sprintf("jwks = %q", jwks)} {
		a := NewAuthz(slog.New(slog.DiscardHandler), nil)
		a.keys = newKeyFetcher(srv.Client())
		a.Update(configOf(t, servicesH+rules+`
jwt "orders" {
  issuer    = "https://issuer.test"
  audiences = ["orders"]
  `+keys+`
}
`))
		now := time.Now()
		claims := func(mod func(map[string]any)) map[string]any {
			c := map[string]any{"iss": "https://issuer.test", "aud": []string{"orders"}, "sub": "alice", "group": "admins", "exp": now.Add(time.Hour).Unix()}
			if mod != nil {
				mod(c)
			}
			return c
		}
		for _, c := range []struct {
			name   string
			token  string
			status codes.Code
			http   typev3.StatusCode
		}{
			{"valid", token(t, key, claims(nil)), codes.OK, 0},
			{"expired", token(t, key, claims(func(c map[string]any) { c["exp"] = now.Add(-time.Hour).Unix() })), codes.Unauthenticated, typev3.StatusCode_Unauthorized},
			{"wrong issuer", token(t, key, claims(func(c map[string]any) { c["iss"] = "https://other.test" })), codes.Unauthenticated, typev3.StatusCode_Unauthorized},
			{"wrong audience", token(t, key, claims(func(c map[string]any) { c["aud"] = "payments" })), codes.Unauthenticated, typev3.StatusCode_Unauthorized},
			{"missing", "", codes.Unauthenticated, typev3.StatusCode_Unauthorized},
			{"valid, but not an admin", token(t, key, claims(func(c map[string]any) { c["group"] = []string{"users"} })), codes.PermissionDenied, typev3.StatusCode_Forbidden},
		} {
			req := checkReq("default/orders", frontend, "GET", "/api/orders", 8080)
			if c.token != "" {
				req.Attributes.Request.Http.Headers["authorization"] = "Bearer " + c.token
			}
			resp, err := a.Check(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != c.status || resp.GetDeniedResponse().GetStatus().GetCode() != c.http {
				t.Errorf("%s (%s): %v %v, want %v %v (%s)", c.name, keys[:4], got, resp.GetDeniedResponse().GetStatus().GetCode(), c.status, c.http, resp.GetDeniedResponse().GetBody())
			}
		}
	}
}
