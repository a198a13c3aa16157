package config

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// The exact form the policy issue fixes must decode.
const issueAuthzForm = `mesh { trust_domain = "mesh.test" }
authorization "orders" {
  namespace = "default"            # optional, default "default"
  rule {
    action = "allow"
    from { services = ["frontend"] }   # "name" in the same namespace, or "namespace/name"
    to { methods = ["GET"]  paths = ["/api/*"] }   # exact, "prefix*", "*suffix"
  }
}
`

func TestAuthzIssueForm(t *testing.T) {
	cfg, diags := Parse([]File{{Name: "orders.hcl", Content: []byte(issueAuthzForm)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	if cfg.Mesh.TrustDomain != "mesh.test" {
		t.Fatalf("trust domain %q", cfg.Mesh.TrustDomain)
	}
	rules := cfg.Authz.Rules(ServiceRef{"default", "orders"})
	if len(rules) != 1 {
		t.Fatalf("rules = %+v", rules)
	}
	r := rules[0]
	if r.Action != AuthzAllow || r.DryRun || r.ID != "default/orders/0" || r.DeclRange.Start.Line != 4 {
		t.Fatalf("rule = %+v", r)
	}
	if len(r.From) != 1 || fmt.Sprint(r.From[0].Services) != "[default/frontend]" {
		t.Fatalf("from = %+v", r.From[0])
	}
	to := r.To[0]
	if fmt.Sprint(to.Methods, to.Paths) != "[GET] [/api/*]" || to.DeclRange.Start.Line != 7 || to.DeclRange.Start.Column != 5 {
		t.Fatalf("to = %+v at %s", to, to.DeclRange)
	}
	if cfg.EnforceFor(ServiceRef{"default", "orders"}) != EnforceProxy {
		t.Fatal("default enforcement is not proxy")
	}
	// No service is declared and no registry configured: both names warn.
	if len(cfg.Warnings) != 2 {
		t.Fatalf("warnings = %v", cfg.Warnings)
	}
}

// Positions stay exact around one-line blocks with several arguments.
func TestOneLineBlockPositions(t *testing.T) {
	src := `authorization "orders" {
  rule {
    action = "allow"
    to { methods = ["GET"]  paths = ["api/*"]  ports = [8080] }
    from { services = ["frontend"] }
  }
}
service "orders" {
  protocol = "http2x"
}
`
	_, diags := Parse([]File{{Name: "o.hcl", Content: []byte(src)}})
	want := map[string]string{
		"Pattern can never match": "o.hcl:4:37", // the value of paths
		"Invalid protocol":        "o.hcl:9:14",
	}
	got := map[string]string{}
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			got[d.Summary] = fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("diagnostics at %v, want %v\n%s", got, want, diags.Error())
	}
	// A one-line block that is not split keeps HCL's own error.
	_, diags = Parse([]File{{Name: "p.hcl", Content: []byte("mesh {\n  trust_domain = \"a\" x\n}\n")}})
	if !diags.HasErrors() {
		t.Fatal("garbage accepted")
	}
}

func TestAuthzDecode(t *testing.T) {
	src := `mesh {
  trust_domain = "mesh.test"
  default_deny = true
  enforce      = "both"
  policyd {
    address = "127.0.0.1:15020"
    timeout = "1s"
  }
}
service "orders" {
  protocol = "http"
}
service "frontend" {
  protocol = "http"
}
authorization "orders" {
  enforce = "policyd"
  rule {
    action = "deny"
    mode   = "dry-run"
    from {
      principals     = ["spiffe://mesh.test/ns/a/*", "*/sa/x"]
      not_principals = ["*"]
      services       = ["frontend", "payments/api"]
      not_services   = ["b"]
      namespaces     = ["prod-*"]
      not_namespaces = ["*-test"]
    }
    to {
      methods     = ["get", "POST"]
      not_methods = ["DELETE"]
      paths       = ["/a", "/b/*", "*.json", "*"]
      not_paths   = ["/c"]
      ports       = [80, 443]
      not_ports   = [8080]
      hosts       = ["Orders.Example.COM", "*.example.com"]
      not_hosts   = ["x*"]
    }
    when {
      key    = "request.headers[X-Tenant]"
      values = ["acme", "b*"]
    }
    when {
      key        = "request.auth.claims[\"realm_access\"][\"roles\"]"
      not_values = ["guest"]
      regex      = "adm.*"
    }
    when {
      key     = "request.headers[Host]"
      present = true
    }
  }
}
`
	cfg, diags := Parse([]File{{Name: "a.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	m := cfg.Mesh
	if !m.DefaultDeny || m.Enforce != EnforceBoth || m.Policyd == nil || m.Policyd.Address != "127.0.0.1:15020" || m.Policyd.Timeout != time.Second {
		t.Fatalf("mesh = %+v %+v", m, m.Policyd)
	}
	if e := cfg.EnforceFor(ServiceRef{"default", "orders"}); e != EnforcePolicyd {
		t.Fatalf("enforce = %s", e)
	}
	if e := cfg.EnforceFor(ServiceRef{"default", "other"}); e != EnforceBoth {
		t.Fatalf("mesh enforce = %s", e)
	}
	r := cfg.Authz.Rules(ServiceRef{"default", "orders"})[0]
	f, o := r.From[0], r.To[0]
	got := fmt.Sprintln(r.Action, r.DryRun, f.Principals, f.NotPrincipals, f.Services, f.NotServices, f.Namespaces, f.NotNamespaces,
		o.Methods, o.NotMethods, o.Paths, o.NotPaths, o.Ports, o.NotPorts, o.Hosts, o.NotHosts)
	want := "deny true [spiffe://mesh.test/ns/a/* */sa/x] [*] [default/frontend payments/api] [default/b] [prod-*] [*-test] " +
		"[GET POST] [DELETE] [/a /b/* *.json *] [/c] [80 443] [8080] [orders.example.com *.example.com] [x*]\n"
	if got != want {
		t.Fatalf("decoded\n%s\nwant\n%s", got, want)
	}
	w := r.When
	if w[0].Kind != ConditionHeader || w[0].Name != "x-tenant" || fmt.Sprint(w[0].Values) != "[acme b*]" {
		t.Fatalf("when 0 = %+v", w[0])
	}
	if w[1].Kind != ConditionClaim || fmt.Sprint(w[1].ClaimPath) != "[realm_access roles]" || w[1].Regex != "adm.*" || fmt.Sprint(w[1].NotValues) != "[guest]" {
		t.Fatalf("when 1 = %+v", w[1])
	}
	if w[2].Name != ":authority" || w[2].Present == nil || !*w[2].Present {
		t.Fatalf("when 2 = %+v", w[2])
	}
	// payments/api and b are not declared, and orders has no jwt block for
	// its claim: warnings, not errors.
	if len(cfg.Warnings) != 3 {
		t.Fatalf("warnings: %v", cfg.Warnings)
	}
}

func TestAuthzDiagnostics(t *testing.T) {
	rule := func(body string) string {
		return "authorization \"orders\" {\n  rule {\n" + body + "\n  }\n}\n"
	}
	tests := []struct {
		name, src, summary, at string
	}{
		{"empty rule", rule(`    action = "allow"`), "Empty rule", "x.hcl:2:3"},
		{"no action", rule(`    from { principals = ["*"] }`), "Missing required argument", "x.hcl:2:8"},
		{"bad action", rule("    action = \"permit\"\n    from { principals = [\"*\"] }"), "Invalid action", "x.hcl:3:14"},
		{"bad mode", rule("    action = \"allow\"\n    mode = \"audit\"\n    from { principals = [\"*\"] }"), "Invalid mode", "x.hcl:4:12"},
		{"empty from", rule("    action = \"allow\"\n    from {}"), "Empty from block", "x.hcl:4:5"},
		{"empty to", rule("    action = \"allow\"\n    to {}"), "Empty to block", "x.hcl:4:5"},
		{"unknown attribute", rule("    action = \"allow\"\n    from { users = [\"a\"] }"), "Unsupported argument", "x.hcl:4:12"},
		{"wildcard in the middle", rule("    action = \"allow\"\n    to { paths = [\"/a/*/b\"] }"), "Pattern can never match", "x.hcl:4:18"},
		{"two wildcards", rule("    action = \"allow\"\n    to { hosts = [\"*a*\"] }"), "Pattern can never match", "x.hcl:4:18"},
		{"relative path", rule("    action = \"allow\"\n    to { paths = [\"api/*\"] }"), "Pattern can never match", "x.hcl:4:18"},
		{"query in path", rule("    action = \"allow\"\n    to { paths = [\"/a?b=c\"] }"), "Pattern can never match", "x.hcl:4:18"},
		{"principal not a SPIFFE ID", rule("    action = \"allow\"\n    from { principals = [\"cluster.local/ns/a/sa/b\"] }"), "Pattern can never match", "x.hcl:4:25"},
		{"service with a wildcard", rule("    action = \"allow\"\n    from { services = [\"front*\"] }"), "Invalid service", "x.hcl:4:23"},
		{"bad method", rule("    action = \"allow\"\n    to { methods = [\"FETCH\"] }"), "Pattern can never match", "x.hcl:4:20"},
		{"bad port", rule("    action = \"allow\"\n    to { ports = [0] }"), "Invalid port", "x.hcl:4:18"},
		{"empty list", rule("    action = \"allow\"\n    from { namespaces = [] }"), "Empty list", "x.hcl:4:25"},
		{"bad key", rule("    action = \"allow\"\n    when {\n      key = \"source.ip\"\n      values = [\"a\"]\n    }"), "Invalid condition key", "x.hcl:5:13"},
		{"grpc- header", rule("    action = \"allow\"\n    when {\n      key = \"request.headers[grpc-timeout]\"\n      present = true\n    }"), "Header not allowed", "x.hcl:5:13"},
		{"condition without a test", rule("    action = \"allow\"\n    when {\n      key = \"request.headers[x]\"\n    }"), "Empty when block", "x.hcl:4:5"},
		{"absent and valued", rule("    action = \"allow\"\n    when {\n      key = \"request.headers[x]\"\n      present = false\n      values = [\"a\"]\n    }"), "Condition can never hold", "x.hcl:4:5"},
		{"bad regex", rule("    action = \"allow\"\n    when {\n      key = \"request.headers[x]\"\n      regex = \"(\"\n    }"), "Invalid regular expression", "x.hcl:6:15"},
		{"bad enforce", "authorization \"orders\" {\n  enforce = \"sidecar\"\n}\n", "Invalid enforce", "x.hcl:2:13"},
		{"policyd nowhere", "mesh {\n  policyd {\n    timeout = \"1s\"\n  }\n}\n", "Where is policyd?", "x.hcl:2:3"},
		{"policyd twice over", "mesh {\n  policyd {\n    address = \"a:1\"\n    service = \"p\"\n  }\n}\n", "Where is policyd?", "x.hcl:2:3"},
		{"policyd bad address", "mesh {\n  policyd {\n    address = \"127.0.0.1\"\n  }\n}\n", "Invalid address", "x.hcl:3:15"},
		{"bad service label", "authorization \"a b\" {\n  enforce = \"proxy\"\n}\n", "Invalid service name", "x.hcl:1:15"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, diags := Parse([]File{{Name: "x.hcl", Content: []byte(tt.src)}})
			for _, d := range diags {
				if d.Summary == tt.summary && d.Severity == hcl.DiagError {
					if at := fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column); at != tt.at {
						t.Fatalf("%q at %s, want %s", tt.summary, at, tt.at)
					}
					return
				}
			}
			t.Fatalf("no %q error in:\n%s", tt.summary, diags.Error())
		})
	}
}

func TestAuthzWarnings(t *testing.T) {
	src := `service "db" {
  protocol = "tcp"
}
service "greeter" {
  protocol = "grpc"
}
authorization "db" {
  rule {
    action = "allow"
    to { paths = ["/x"] }
  }
}
authorization "greeter" {
  rule {
    action = "allow"
    to { methods = ["GET"] }
    when {
      key    = "request.auth.claims[group]"
      values = ["a"]
    }
  }
}
authorization "nobody" {
  enforce = "policyd"
  rule {
    action = "deny"
    from { services = ["ghost"] }
  }
}
`
	cfg, diags := Parse([]File{{Name: "w.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	var got []string
	for _, w := range cfg.Warnings {
		got = append(got, fmt.Sprintf("%d:%s", w.Subject.Start.Line, w.Summary))
	}
	want := []string{
		"10:Not evaluable for a TCP service",
		"16:Pattern can never match",
		"17:Not evaluable by proxyless gRPC",
		"17:No jwt block",
		"23:Unknown service",
		"24:No policyd configured",
		"27:Unknown service",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestAuthzAcrossFiles(t *testing.T) {
	a := File{Name: "a.hcl", Content: []byte("authorization \"orders\" {\n  enforce = \"proxy\"\n  rule {\n    action = \"allow\"\n    from { principals = [\"*\"] }\n  }\n}\n")}
	b := File{Name: "b.hcl", Content: []byte("authorization \"orders\" {\n  rule {\n    action = \"deny\"\n    to { paths = [\"/x\"] }\n  }\n}\n")}
	cfg, diags := Parse([]File{a, b})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	rules := cfg.Authz.Rules(ServiceRef{"default", "orders"})
	if len(rules) != 2 || rules[0].ID != "default/orders/0" || rules[1].ID != "default/orders/1" || rules[1].DeclRange.Filename != "b.hcl" {
		t.Fatalf("rules = %+v %+v", rules[0], rules[1])
	}
	c := File{Name: "c.hcl", Content: []byte("authorization \"orders\" {\n  enforce = \"both\"\n}\n")}
	_, diags = Parse([]File{a, b, c})
	if !diags.HasErrors() || diags[0].Summary != "Conflicting enforce" || diags[0].Subject.Filename != "c.hcl" {
		t.Fatalf("diags = %s", diags.Error())
	}
}

// A broken authorization file is rejected whole and its last valid rules
// keep deciding.
func TestAuthzRejectedFileKeepsRules(t *testing.T) {
	s := NewStore(slog.New(slog.DiscardHandler))
	good := File{Name: "authz.hcl", Content: []byte("authorization \"orders\" {\n  rule {\n    action = \"deny\"\n    from { services = [\"frontend\"] }\n  }\n}\n")}
	s.Update(FileSet{Source: "dir", Files: []File{good}})
	bad := File{Name: "authz.hcl", Content: []byte("authorization \"orders\" {\n  rule {\n    action = \"allow\"\n    from { services = [\"front*\"] }\n  }\n}\n")}
	s.Update(FileSet{Source: "dir", Files: []File{bad}})
	cfg := s.Current()
	rules := cfg.Authz.Rules(ServiceRef{"default", "orders"})
	if len(rules) != 1 || rules[0].Action != AuthzDeny {
		t.Fatalf("rules in force = %+v", rules)
	}
	if len(cfg.Status.Rejected) != 1 || !strings.Contains(cfg.Status.Rejected[0].Text(), "authz.hcl:4:") {
		t.Fatalf("status = %+v", cfg.Status)
	}
}
