package policy

import (
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

const td = "mesh.test"

func principal(ns, svc string) string { return discovery.ServiceIdentity(td, ns, svc) }

var (
	frontend = principal("default", "frontend")
	backend  = principal("default", "backend")
	payments = principal("payments", "api")
	stagingX = principal("staging-eu", "x")
	sa       = discovery.ServiceAccountIdentity(td, "default", "frontend-sa")
)

// services are declared so that no "unknown service" warning hides errors.
const servicesHCL = `
service "orders" {
  protocol = "http"
}
service "frontend" {
  protocol = "http"
}
service "backend" {
  protocol = "http"
}
service "db" {
  protocol = "tcp"
}
service "greeter" {
  protocol = "grpc"
}
`

func parse(t testing.TB, mesh, rules string) *config.Config {
	t.Helper()
	src := mesh + servicesHCL + rules
	cfg, diags := config.Parse([]config.File{{Name: "policy.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatalf("parse: %s", diags.Error())
	}
	return cfg
}

// catalog reports frontend's Kubernetes workloads with a service-account
// identity, and the protocols of the services.
func catalog() *discovery.Snapshot {
	svc := func(name string, p discovery.Protocol, ids ...string) *discovery.Service {
		s := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: name}, Protocol: p}
		for i, id := range ids {
			s.Endpoints = append(s.Endpoints, discovery.Endpoint{Address: "10.0.0." + string(rune('1'+i)), Port: 8080, Identity: id})
		}
		return s
	}
	return discovery.NewSnapshot(nil, []*discovery.Service{
		svc("orders", discovery.ProtocolHTTP), svc("frontend", discovery.ProtocolHTTP, sa),
		svc("backend", discovery.ProtocolHTTP), svc("db", discovery.ProtocolTCP), svc("greeter", discovery.ProtocolGRPC),
	})
}

type reqCase struct {
	name    string
	req     Request
	allow   bool
	rule    string // the deciding rule's index ("" = the default)
	dry     *bool  // the dry-run outcome, when the destination has dry-run rules
	dryRule string
}

func get(p string) Request {
	return Request{Principal: p, Method: "GET", Path: "/api/orders", Host: "orders", Port: 8080}
}

func with(r Request, f func(*Request)) Request { f(&r); return r }

func ptr[T any](v T) *T { return &v }

func TestEvaluatorSemantics(t *testing.T) {
	const mesh = "mesh {\n  trust_domain = \"mesh.test\"\n}\n"
	const meshDeny = "mesh {\n  trust_domain = \"mesh.test\"\n  default_deny = true\n}\n"
	tests := []struct {
		name  string
		mesh  string
		rules string
		dest  string
		cases []reqCase
	}{
		{name: "no rules: allowed", mesh: mesh, dest: "default/orders", cases: []reqCase{
			{name: "anyone", req: get(backend), allow: true},
			{name: "plaintext", req: get(""), allow: true},
		}},
		{name: "no rules with default_deny: denied", mesh: meshDeny, dest: "default/orders", cases: []reqCase{
			{name: "anyone", req: get(frontend), allow: false},
		}},
		{name: "the issue's rule", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  namespace = "default"
  rule {
    action = "allow"
    from { services = ["frontend"] }
    to { methods = ["GET"]  paths = ["/api/*"] }
  }
}`, cases: []reqCase{
			{name: "frontend GET /api/orders", req: get(frontend), allow: true, rule: "0"},
			{name: "frontend's service account (catalog)", req: get(sa), allow: true, rule: "0"},
			{name: "frontend POST", req: with(get(frontend), func(r *Request) { r.Method = "POST" }), allow: false},
			{name: "frontend /admin", req: with(get(frontend), func(r *Request) { r.Path = "/admin" }), allow: false},
			{name: "query string ignored", req: with(get(frontend), func(r *Request) { r.Path = "/api/x?y=/admin" }), allow: true, rule: "0"},
			{name: "backend: an allow rule exists, none matches", req: get(backend), allow: false},
			{name: "plaintext", req: get(""), allow: false},
		}},
		{name: "deny first", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "allow"
    from { namespaces = ["default"] }
  }
  rule {
    action = "deny"
    to { paths = ["/admin*"] }
  }
}`, cases: []reqCase{
			{name: "allowed by namespace", req: get(frontend), allow: true, rule: "0"},
			{name: "deny wins over allow", req: with(get(frontend), func(r *Request) { r.Path = "/admin/x" }), allow: false, rule: "1"},
			{name: "other namespace", req: get(payments), allow: false},
		}},
		{name: "deny only: everything else allowed", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "deny"
    from { services = ["backend"] }
  }
}`, cases: []reqCase{
			{name: "backend denied", req: get(backend), allow: false, rule: "0"},
			{name: "frontend allowed", req: get(frontend), allow: true},
			{name: "plaintext allowed", req: get(""), allow: true},
		}},
		{name: "deny only with default_deny", mesh: meshDeny, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "deny"
    from { services = ["backend"] }
  }
}`, cases: []reqCase{
			{name: "backend denied by the rule", req: get(backend), allow: false, rule: "0"},
			{name: "frontend denied by default", req: get(frontend), allow: false},
		}},
		{name: "not_ forms", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "allow"
    from {
      namespaces     = ["*"]
      not_services   = ["backend"]
      not_principals = ["*/svc/x"]
    }
    to {
      not_methods = ["DELETE"]
      not_paths   = ["/private*"]
      not_ports   = [9090]
      not_hosts   = ["*.internal"]
    }
  }
}`, cases: []reqCase{
			{name: "frontend", req: get(frontend), allow: true, rule: "0"},
			{name: "backend excluded", req: get(backend), allow: false},
			{name: "principal suffix excluded", req: get(stagingX), allow: false},
			{name: "DELETE excluded", req: with(get(frontend), func(r *Request) { r.Method = "DELETE" }), allow: false},
			{name: "path excluded", req: with(get(frontend), func(r *Request) { r.Path = "/private/x" }), allow: false},
			{name: "port excluded", req: with(get(frontend), func(r *Request) { r.Port = 9090 }), allow: false},
			{name: "host excluded, any case", req: with(get(frontend), func(r *Request) { r.Host = "Orders.INTERNAL" }), allow: false},
			{name: "plaintext: namespaces need an identity", req: get(""), allow: false},
		}},
		{name: "principal and namespace wildcards", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "allow"
    from { principals = ["spiffe://mesh.test/ns/payments/*"] }
  }
  rule {
    action = "allow"
    from { namespaces = ["staging-*"] }
  }
  rule {
    action = "allow"
    from { principals = ["*/svc/backend"] }
  }
}`, cases: []reqCase{
			{name: "prefix", req: get(payments), allow: true, rule: "0"},
			{name: "namespace prefix", req: get(stagingX), allow: true, rule: "1"},
			{name: "suffix", req: get(backend), allow: true, rule: "2"},
			{name: "none", req: get(frontend), allow: false},
			{name: "another trust domain's namespace", req: get("spiffe://other.test/ns/staging-eu/svc/x"), allow: false},
		}},
		{name: "any authenticated caller", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "allow"
    from { principals = ["*"] }
  }
}`, cases: []reqCase{
			{name: "mTLS", req: get(backend), allow: true, rule: "0"},
			{name: "plaintext", req: get(""), allow: false},
		}},
		{name: "from blocks are alternatives, attributes within one all hold", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "allow"
    from {
      namespaces = ["default"]
      services   = ["frontend"]
    }
    from { namespaces = ["payments"] }
    to { ports = [8080] }
    to { hosts = ["ORDERS.example.com"] }
  }
}`, cases: []reqCase{
			{name: "first from", req: get(frontend), allow: true, rule: "0"},
			{name: "second from", req: get(payments), allow: true, rule: "0"},
			{name: "neither", req: get(backend), allow: false},
			{name: "second to", req: with(get(frontend), func(r *Request) { r.Port, r.Host = 1, "orders.EXAMPLE.com" }), allow: true, rule: "0"},
			{name: "no to", req: with(get(frontend), func(r *Request) { r.Port = 1 }), allow: false},
		}},
		{name: "when: headers", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "allow"
    when {
      key    = "request.headers[x-tenant]"
      values = ["acme", "beta-*"]
    }
    when {
      key        = "request.headers[X-Env]"
      not_values = ["prod"]
    }
    when {
      key   = "request.headers[x-id]"
      regex = "[0-9]+"
    }
    when {
      key     = "request.headers[x-debug]"
      present = false
    }
  }
}`, cases: []reqCase{
			{name: "all hold", req: with(get(""), func(r *Request) { r.Headers = map[string]string{"x-tenant": "beta-2", "x-id": "42"} }), allow: true, rule: "0"},
			{name: "not_values", req: with(get(""), func(r *Request) { r.Headers = map[string]string{"x-tenant": "acme", "x-id": "1", "x-env": "prod"} }), allow: false},
			{name: "regex is whole value", req: with(get(""), func(r *Request) { r.Headers = map[string]string{"x-tenant": "acme", "x-id": "1a"} }), allow: false},
			{name: "absent header", req: with(get(""), func(r *Request) { r.Headers = map[string]string{"x-id": "1"} }), allow: false},
			{name: "present = false", req: with(get(""), func(r *Request) {
				r.Headers = map[string]string{"x-tenant": "acme", "x-id": "1", "x-debug": "1"}
			}), allow: false},
			{name: "an empty header is missing", req: with(get(""), func(r *Request) {
				r.Headers = map[string]string{"x-tenant": "acme", "x-id": "1", "x-debug": ""}
			}), allow: true, rule: "0"},
		}},
		{name: "when: claims", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "allow"
    when {
      key    = "request.auth.claims[\"group\"]"
      values = ["admins"]
    }
  }
}`, cases: []reqCase{
			{name: "string claim", req: with(get(""), func(r *Request) { r.Claims = map[string]any{"group": "admins"} }), allow: true, rule: "0"},
			{name: "list claim", req: with(get(""), func(r *Request) { r.Claims = map[string]any{"group": []any{"users", "admins"}} }), allow: true, rule: "0"},
			{name: "other group", req: with(get(""), func(r *Request) { r.Claims = map[string]any{"group": "users"} }), allow: false},
			{name: "no token", req: get(""), allow: false},
		}},
		{name: "dry-run deny decides nothing", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "deny"
    mode   = "dry-run"
    from { services = ["backend"] }
  }
}`, cases: []reqCase{
			{name: "would deny backend", req: get(backend), allow: true, dry: ptr(false), dryRule: "0"},
			{name: "would allow frontend", req: get(frontend), allow: true, dry: ptr(true)},
		}},
		{name: "dry-run allow does not make allow rules required", mesh: mesh, dest: "default/orders", rules: `
authorization "orders" {
  rule {
    action = "allow"
    mode   = "dry-run"
    from { services = ["frontend"] }
  }
}`, cases: []reqCase{
			{name: "frontend", req: get(frontend), allow: true, dry: ptr(true), dryRule: "0"},
			{name: "backend would be denied", req: get(backend), allow: true, dry: ptr(false)},
		}},
		{name: "TCP destination: HTTP conditions fail closed", mesh: mesh, dest: "default/db", rules: `
authorization "db" {
  rule {
    action = "allow"
    from { services = ["frontend"] }
    to { paths = ["/x"] }
  }
  rule {
    action = "allow"
    from { services = ["backend"] }
    to { ports = [8080] }
  }
  rule {
    action = "deny"
    from { services = ["backend"] }
    to { methods = ["DELETE"] }
  }
}`, cases: []reqCase{
			{name: "an allow rule with a path never matches", req: get(frontend), allow: false},
			{name: "a deny rule applies without its method", req: get(backend), allow: false, rule: "2"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := parse(t, tt.mesh, tt.rules)
			e := NewEvaluator(cfg, catalog())
			for _, c := range tt.cases {
				d, en := e.Decide(tt.dest, "", &c.req)
				if en == nil {
					t.Fatalf("%s: destination %s not found", c.name, tt.dest)
				}
				if d.Allow != c.allow {
					t.Errorf("%s: allow = %v, want %v", c.name, d.Allow, c.allow)
				}
				if got := ruleIndex(d.Rule); got != c.rule {
					t.Errorf("%s: decided by rule %q, want %q", c.name, got, c.rule)
				}
				if c.dry == nil && d.DryRun {
					t.Errorf("%s: unexpected dry-run outcome", c.name)
				}
				if c.dry != nil {
					if !d.DryRun || d.DryAllow != *c.dry || ruleIndex(d.DryRule) != c.dryRule {
						t.Errorf("%s: dry run = %v %v %q, want %v %q", c.name, d.DryRun, d.DryAllow, ruleIndex(d.DryRule), *c.dry, c.dryRule)
					}
				}
			}
		})
	}
}

func ruleIndex(r *Rule) string {
	if r == nil {
		return ""
	}
	return r.ID[strings.LastIndexByte(r.ID, '/')+1:]
}

func TestTargets(t *testing.T) {
	cfg := parse(t, "", `
authorization "greeter" {
  rule {
    action = "allow"
    when {
      key    = "request.auth.claims[group]"
      values = ["admins"]
    }
  }
  rule {
    action = "deny"
    from { services = ["backend"] }
    when {
      key    = "request.auth.claims[group]"
      values = ["admins"]
    }
  }
}`)
	d := ForService(cfg, catalog(), discovery.ServiceKey{Namespace: "default", Name: "greeter"})
	m := MetaOf(cfg)
	http := d.Ruleset(TargetHTTP, m)
	if len(http.Allow) != 1 || len(http.Deny) != 1 || len(http.Deny[0].When) != 1 {
		t.Fatalf("HTTP ruleset = %+v", http)
	}
	grpc := d.Ruleset(TargetGRPC, m)
	if !grpc.AllowPresent || len(grpc.Allow) != 0 || len(grpc.Deny) != 1 || len(grpc.Deny[0].When) != 0 {
		t.Fatalf("gRPC ruleset: the allow rule must never match and the deny rule lose its claim: %+v", grpc)
	}
	if d.Rules[1].When == nil {
		t.Fatal("the transformation changed the destination's own rule")
	}
	// gRPC denies everything: the allow rule cannot match.
	admin := &Request{Principal: frontend, Claims: map[string]any{"group": "admins"}}
	if dec := grpc.Decide(admin, "spiffe://"+td+"/ns/"); dec.Allow {
		t.Fatal("gRPC target allowed")
	}
	if dec := http.Decide(admin, "spiffe://bowline.local/ns/"); !dec.Allow {
		t.Fatal("HTTP target denied an admin")
	}
}

func TestLookup(t *testing.T) {
	cfg := parse(t, "mesh {\n  trust_domain = \"mesh.test\"\n}\n", `
authorization "frontend" {
  rule {
    action = "deny"
    from { principals = ["*"] }
  }
}`)
	e := NewEvaluator(cfg, catalog())
	req := get(backend)
	for _, c := range []struct {
		name, dest, principal string
		found, allow          bool
	}{
		{"by name", "default/frontend", "", true, false},
		{"a name without rules", "default/orders", "", true, true},
		{"by the service's SPIFFE ID", "", frontend, true, false},
		{"by a service account from the catalog", "", sa, true, false},
		{"a SPIFFE ID of a service without rules", "", backend, true, true},
		{"an unknown service account", "", discovery.ServiceAccountIdentity(td, "default", "nobody"), false, false},
		{"nothing", "", "", false, false},
		{"a malformed name", "orders", "", false, false},
	} {
		d, en := e.Decide(c.dest, c.principal, &req)
		if (en != nil) != c.found || d.Allow != c.allow {
			t.Errorf("%s: found %v allow %v, want %v %v", c.name, en != nil, d.Allow, c.found, c.allow)
		}
	}
}

func TestServicePrincipals(t *testing.T) {
	got := ServicePrincipals(td, discovery.ServiceKey{Namespace: "default", Name: "frontend"}, catalog())
	want := []string{sa, frontend} // sorted
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("principals = %v, want %v", got, want)
	}
	got = ServicePrincipals(td, discovery.ServiceKey{Namespace: "x", Name: "unknown"}, nil)
	if len(got) != 1 || got[0] != principal("x", "unknown") {
		t.Fatalf("principals without a catalog = %v", got)
	}
}
