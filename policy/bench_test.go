package policy

import (
	"testing"
)

// BenchmarkDecide decides the policy issue's rule (allowed and denied
// requests) with a destination lookup by name, as policyd does for every
// ext_authz check. It must not allocate.
func BenchmarkDecide(b *testing.B) {
	cfg := parse(b, "mesh {\n  trust_domain = \"mesh.test\"\n}\n", `
authorization "orders" {
  namespace = "default"
  rule {
    action = "allow"
    from { services = ["frontend"] }
    to { methods = ["GET"]  paths = ["/api/*"] }
  }
}`)
	e := NewEvaluator(cfg, catalog())
	headers := map[string]string{":authority": "orders", ":method": "GET", ":path": "/api/orders/1", "x-request-id": "1"}
	reqs := []Request{
		{Principal: frontend, Method: "GET", Path: "/api/orders/1?x=y", Host: "orders", Port: 8080, Headers: headers},
		{Principal: backend, Method: "GET", Path: "/api/orders/1", Host: "orders", Port: 8080, Headers: headers},
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d, _ := e.Decide("default/orders", "", &reqs[i&1])
		if d.Allow != (i&1 == 0) {
			b.Fatal("wrong decision")
		}
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	cfg := parse(t, "", `
authorization "orders" {
  rule {
    action = "deny"
    from { namespaces = ["prod-*"] }
    when {
      key    = "request.headers[x-tenant]"
      values = ["acme", "b*"]
    }
  }
  rule {
    action = "allow"
    from { services = ["frontend"]  not_principals = ["*/sa/x"] }
    to { methods = ["GET"]  paths = ["/api/*"]  not_hosts = ["*.internal"]  ports = [8080] }
  }
}`)
	e := NewEvaluator(cfg, catalog())
	req := Request{Principal: frontend, Method: "GET", Path: "/api/orders/1?x=y", Host: "orders", Port: 8080,
		Headers: map[string]string{"x-tenant": "acme"}}
	if n := testing.AllocsPerRun(100, func() { e.Decide("default/orders", "", &req) }); n != 0 {
		t.Fatalf("Decide allocates %v times", n)
	}
}
