package config

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// The exact form the rate limit issue fixes must decode.
const issueRateLimitForm = `rate_limit "orders" {
  namespace = "default"              # optional
  global {
    requests = 1000
    per      = "1m"                  # s, m, h (and "1s", "10s", ...)
    by       = ["source.service"]    # optional: one counter per distinct value
  }
  local {
    requests = 100
    per      = "1s"
  }
}
`

const ordersDecl = `mesh {
  policyd {
    address = "127.0.0.1:9091"
  }
}
service "orders" {
  protocol = "http"
  endpoint {
    address = "10.0.0.1"
    port    = 8080
  }
}
service "payments" {
  protocol = "grpc"
  endpoint {
    address = "10.0.0.2"
    port    = 9090
  }
}
service "ledger" {
  endpoint {
    address = "10.0.0.3"
    port    = 5432
  }
}
`

func parseRL(t *testing.T, src string) (*Config, hcl.Diagnostics) {
	t.Helper()
	return Parse([]File{{Name: "svc.hcl", Content: []byte(ordersDecl)}, {Name: "limits.hcl", Content: []byte(src)}})
}

func TestRateLimitIssueForm(t *testing.T) {
	cfg, diags := parseRL(t, issueRateLimitForm)
	if diags.HasErrors() || len(cfg.Warnings) != 0 {
		t.Fatalf("diagnostics: %s", diags.Error())
	}
	rl := cfg.RateLimits.For(ServiceRef{"default", "orders"})
	if rl == nil {
		t.Fatal("no rate limits for default/orders")
	}
	if rl.OnError != OnErrorAllow || rl.DeclRange.Start.Line != 1 {
		t.Fatalf("rate limit = %+v", rl)
	}
	if len(rl.Global) != 1 {
		t.Fatalf("global = %+v", rl.Global)
	}
	g := rl.Global[0]
	if g.Requests != 1000 || g.Per != time.Minute || g.ID != "default/orders/0" || g.Matched() || g.DeclRange.Start.Line != 3 {
		t.Fatalf("global = %+v", g)
	}
	if fmt.Sprint(g.DescriptorKeys()) != "[destination source]" {
		t.Fatalf("descriptor keys = %v", g.DescriptorKeys())
	}
	if l := rl.Local; l == nil || l.Requests != 100 || l.Per != time.Second || l.DeclRange.Start.Line != 8 {
		t.Fatalf("local = %+v", rl.Local)
	}
	if refs := cfg.RateLimits.Refs(); len(refs) != 1 {
		t.Fatalf("refs = %v", refs)
	}
}

func TestRateLimitDecode(t *testing.T) {
	cfg, diags := parseRL(t, `rate_limit "orders" {
  on_error = "deny"
  global {
    requests = 5000
    per      = "h"
  }
  global {
    requests = 10
    per      = "10s"
    by       = ["source.principal", "request.headers[\"X-Tenant\"]", "request.path", "request.headers[host]"]
    match {
      methods = ["post"]
      path {
        prefix = "/orders"
      }
      header "x-debug" {
        present = true
      }
    }
  }
  global {
    requests = 100
    per      = "s"
    by       = ["source.service"]
    match {
      path {
        prefix = "/"
      }
    }
  }
}
rate_limit "payments" {
  namespace = "default"
  local {
    requests = 1
    per      = "24h"
  }
}
`)
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	rl := cfg.RateLimits.For(ServiceRef{"default", "orders"})
	if rl.OnError != OnErrorDeny || rl.OnErrorRange.Start.Line != 2 || rl.Local != nil {
		t.Fatalf("rate limit = %+v", rl)
	}
	g0, g1, g2 := rl.Global[0], rl.Global[1], rl.Global[2]
	if g0.Per != time.Hour || g0.Requests != 5000 || g0.ID != "default/orders/0" {
		t.Fatalf("global 0 = %+v", g0)
	}
	if g1.Per != 10*time.Second || g1.ID != "default/orders/1" || !g1.Matched() {
		t.Fatalf("global 1 = %+v", g1)
	}
	if got := fmt.Sprint(g1.DescriptorKeys()); got != "[destination principal header:x-tenant path header::authority]" {
		t.Fatalf("descriptor keys = %s", got)
	}
	if m := g1.Match; fmt.Sprint(m.Methods) != "[POST]" || m.PathPrefix != "/orders" || len(m.Headers) != 1 {
		t.Fatalf("match = %+v", m)
	}
	if g2.Matched() {
		t.Fatal(`a match on prefix "/" is every request`)
	}
	p := cfg.RateLimits.For(ServiceRef{"default", "payments"})
	if p.Local.Per != 24*time.Hour || len(p.Global) != 0 {
		t.Fatalf("payments = %+v", p)
	}
	// payments is a gRPC service: proxyless servers do not enforce local limits.
	if len(cfg.Warnings) != 1 || cfg.Warnings[0].Summary != "Not enforced by proxyless gRPC" || cfg.Warnings[0].Subject.Start.Line != 34 {
		t.Fatalf("warnings = %v", cfg.Warnings)
	}
}

func TestRateLimitDiagnostics(t *testing.T) {
	for _, tc := range []struct {
		name    string
		src     string
		line    int
		summary string
		warning bool
	}{
		{"zero rate", `rate_limit "orders" {
  global {
    requests = 0
    per      = "1m"
  }
}`, 3, "Invalid rate", false},
		{"negative rate", `rate_limit "orders" {
  local {
    requests = -5
    per      = "1s"
  }
}`, 3, "Invalid rate", false},
		{"fractional rate", `rate_limit "orders" {
  local {
    requests = 1.5
    per      = "1s"
  }
}`, 3, "Invalid rate", false},
		{"bad period", `rate_limit "orders" {
  global {
    requests = 10
    per      = "1 minute"
  }
}`, 4, "Invalid period", false},
		{"period out of range", `rate_limit "orders" {
  global {
    requests = 10
    per      = "48h"
  }
}`, 4, "Invalid period", false},
		{"zero period", `rate_limit "orders" {
  global {
    requests = 10
    per      = "0s"
  }
}`, 4, "Invalid period", false},
		{"missing per", `rate_limit "orders" {
  global {
    requests = 10
  }
}`, 2, "Missing required argument", false},
		{"unknown attribute", `rate_limit "orders" {
  global {
    requests = 10
    per      = "1m"
    by       = ["source.ip"]
  }
}`, 5, "Unknown attribute", false},
		{"duplicate attribute", `rate_limit "orders" {
  global {
    requests = 10
    per      = "1m"
    by       = ["request.path", "request.path"]
  }
}`, 5, "Duplicate attribute", false},
		{"by on a local limit", `rate_limit "orders" {
  local {
    requests = 10
    per      = "1m"
    by       = ["request.path"]
  }
}`, 5, "Unsupported argument", false},
		{"query match", `rate_limit "orders" {
  global {
    requests = 10
    per      = "1m"
    match {
      query "page" {
        present = true
      }
    }
  }
}`, 6, "Query matches are not supported here", false},
		{"two local blocks", `rate_limit "orders" {
  local {
    requests = 10
    per      = "1m"
  }
  local {
    requests = 20
    per      = "1m"
  }
}`, 6, "Duplicate local block", false},
		{"no limits", `rate_limit "orders" {
  on_error = "deny"
}`, 1, "Rate limit without limits", false},
		{"bad on_error", `rate_limit "orders" {
  on_error = "maybe"
  local {
    requests = 10
    per      = "1m"
  }
}`, 2, "Invalid on_error", false},
		{"indistinguishable", `rate_limit "orders" {
  global {
    requests = 10
    per      = "1m"
    match {
      methods = ["POST"]
    }
  }
  global {
    requests = 10
    per      = "1m"
    match {
      methods = ["GET"]
    }
  }
}`, 9, "Indistinguishable global limits", false},
		{"duplicate rate_limit", `rate_limit "orders" {
  local {
    requests = 10
    per      = "1m"
  }
}
rate_limit "orders" {
  local {
    requests = 10
    per      = "1m"
  }
}`, 7, "Duplicate rate_limit", false},
		{"unknown service", `rate_limit "nobody" {
  local {
    requests = 10
    per      = "1m"
  }
}`, 1, "Unknown service", true},
		{"tcp service", `rate_limit "ledger" {
  local {
    requests = 10
    per      = "1m"
  }
}`, 1, "Not enforced for a TCP service", true},
		{"grpc local", `rate_limit "payments" {
  local {
    requests = 10
    per      = "1m"
  }
}`, 2, "Not enforced by proxyless gRPC", true},
		{"grpc global", `rate_limit "payments" {
  global {
    requests = 10
    per      = "1m"
  }
}`, 2, "Not enforced by proxyless gRPC", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := parseRL(t, tc.src)
			var found *hcl.Diagnostic
			for _, d := range diags {
				if d.Summary == tc.summary {
					found = d
					break
				}
			}
			if found == nil {
				t.Fatalf("no %q diagnostic in:\n%s", tc.summary, diags.Error())
			}
			if found.Subject == nil || found.Subject.Filename != "limits.hcl" || found.Subject.Start.Line != tc.line {
				t.Fatalf("diagnostic at %v, want limits.hcl line %d", found.Subject, tc.line)
			}
			if (found.Severity == hcl.DiagWarning) != tc.warning {
				t.Fatalf("severity %v, warning=%v wanted", found.Severity, tc.warning)
			}
			if !tc.warning != diags.HasErrors() {
				t.Fatalf("HasErrors = %v: %s", diags.HasErrors(), diags.Error())
			}
		})
	}
}

// A catch-all limit and one with a match may share a by list: policyd tells
// them apart by how many descriptors arrive.
func TestRateLimitMatchedAndCatchAllShareKeys(t *testing.T) {
	_, diags := parseRL(t, `rate_limit "orders" {
  global {
    requests = 100
    per      = "1m"
    match {
      methods = ["POST"]
    }
  }
  global {
    requests = 1000
    per      = "1m"
  }
  global {
    requests = 10000
    per      = "1h"
  }
}`)
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
}

func TestRateLimitWarnings(t *testing.T) {
	// Without a policyd block, global limits are enforced by nothing.
	cfg, diags := Parse([]File{{Name: "limits.hcl", Content: []byte(`service "orders" {
  protocol = "http"
  endpoint {
    address = "10.0.0.1"
    port    = 8080
  }
}
identity {
  mtls = "disabled"
}
rate_limit "orders" {
  global {
    requests = 10
    per      = "1m"
    by       = ["source.service"]
  }
}`)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	got := map[string]int{}
	for _, w := range cfg.Warnings {
		got[w.Summary] = w.Subject.Start.Line
	}
	if got["No policyd configured"] != 12 || got["Caller identity unknown"] != 12 || len(got) != 2 {
		t.Fatalf("warnings = %v", cfg.Warnings)
	}
}

// Rate limits read from HCL's JSON syntax.
func TestRateLimitJSON(t *testing.T) {
	cfg, diags := Parse([]File{{Name: "limits.hcl.json", Content: []byte(`{
  "rate_limit": {"orders": {"global": [{"requests": 5, "per": "1s", "by": ["request.headers[\"x-user\"]"]}]}}
}`)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	g := cfg.RateLimits.For(ServiceRef{"default", "orders"}).Global[0]
	if g.Requests != 5 || fmt.Sprint(g.DescriptorKeys()) != "[destination header:x-user]" {
		t.Fatalf("global = %+v", g)
	}
}
