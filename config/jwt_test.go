package config

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

const testJWKS = `{"keys":[{"kty":"RSA","kid":"k1","n":"sXch","e":"AQAB"}]}`

func TestJWTDecode(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "jwks.json"), []byte(testJWKS), 0o644); err != nil {
		t.Fatal(err)
	}
	src := `service "orders" {
  protocol = "http"
}
jwt "orders" {
  issuer    = "https://issuer.test"
  audiences = ["orders", "api"]
  jwks_file = "jwks.json"
}
jwt "orders" {
  issuer         = "https://auth.example.com"
  jwks_uri       = "https://auth.example.com/jwks.json"
  cache_duration = "10m"
  from_header "x-jwt" {
    prefix = "JWT "
  }
  from_params = ["token"]
  forward     = true
}
`
	cfg, diags := Parse([]File{{Name: filepath.Join(dir, "orders.hcl"), Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	js := cfg.JWTFor(ServiceRef{"default", "orders"})
	if len(js) != 2 {
		t.Fatalf("jwt blocks: %+v", js)
	}
	a, b := js[0], js[1]
	if a.ID != "default/orders/0" || a.Issuer != "https://issuer.test" || fmt.Sprint(a.Audiences) != "[orders api]" || a.JWKS != testJWKS {
		t.Fatalf("first = %+v", a)
	}
	if h, p := a.TokenSources(); fmt.Sprint(h, p) != "[{authorization Bearer }] [access_token]" {
		t.Fatalf("default token sources = %v %v", h, p)
	}
	if b.ID != "default/orders/1" || b.JWKSURI == "" || b.CacheDuration != 10*time.Minute || !b.Forward {
		t.Fatalf("second = %+v", b)
	}
	if h, p := b.TokenSources(); fmt.Sprint(h, p) != "[{x-jwt JWT }] [token]" {
		t.Fatalf("token sources = %v %v", h, p)
	}
}

func TestJWTDiagnostics(t *testing.T) {
	block := func(body string) string { return "jwt \"orders\" {\n" + body + "\n}\n" }
	for _, c := range []struct{ name, src, summary, at string }{
		{"no issuer", block(`  jwks = "{}"`), "Missing required argument", "x.hcl:1:14"},
		{"no keys", block(`  issuer = "i"`), "Where are the keys?", "x.hcl:1:1"},
		{"two key sources", block("  issuer = \"i\"\n  jwks = \"{}\"\n  jwks_uri = \"https://a/b\""), "Where are the keys?", "x.hcl:1:1"},
		{"not JSON", block("  issuer = \"i\"\n  jwks = \"{\""), "Invalid key set", "x.hcl:3:10"},
		{"no keys in the set", block("  issuer = \"i\"\n  jwks = \"{\\\"keys\\\": []}\""), "Invalid key set", "x.hcl:3:10"},
		{"plain http", block("  issuer = \"i\"\n  jwks_uri = \"http://a/b\""), "Invalid jwks_uri", "x.hcl:3:14"},
		{"no such file", block("  issuer = \"i\"\n  jwks_file = \"/nonexistent/jwks.json\""), "Cannot read the key set", "x.hcl:3:15"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, diags := Parse([]File{{Name: "x.hcl", Content: []byte(c.src)}})
			for _, d := range diags {
				if d.Severity == hcl.DiagError && d.Summary == c.summary {
					if at := fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column); at != c.at {
						t.Fatalf("%q at %s, want %s", c.summary, at, c.at)
					}
					return
				}
			}
			t.Fatalf("no %q in %s", c.summary, diags.Error())
		})
	}
}
