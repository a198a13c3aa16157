package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// The files of examples/policy load without an error, with no warning but
// the ones their comments announce, and decide what their comments say.
func TestExamples(t *testing.T) {
	paths, err := filepath.Glob("../examples/policy/*.hcl")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	var files []config.File
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, config.File{Name: filepath.Base(p), Content: b})
	}
	cfg, diags := config.Parse(files)
	if diags.HasErrors() {
		t.Fatalf("diagnostics: %s", diags.Error())
	}
	// ratelimits.hcl: greeter is a gRPC service, so each of its three
	// limits (two global, one local) warns that its proxyless instance
	// does not enforce it. Nothing else warns.
	var warnings []string
	for _, d := range diags {
		warnings = append(warnings, fmt.Sprintf("%s:%d: %s", d.Subject.Filename, d.Subject.Start.Line, d.Summary))
	}
	wantWarnings := []string{
		"ratelimits.hcl:22: Not enforced by proxyless gRPC",
		"ratelimits.hcl:28: Not enforced by proxyless gRPC",
		"ratelimits.hcl:39: Not enforced by proxyless gRPC",
	}
	slices.Sort(warnings)
	if !slices.Equal(warnings, wantWarnings) {
		t.Fatalf("warnings:\n%s\nwant:\n%s", strings.Join(warnings, "\n"), strings.Join(wantWarnings, "\n"))
	}

	e := NewEvaluator(cfg, discovery.NewSnapshot(nil, file.Convert(cfg)))
	fe := discovery.ServiceIdentity("mesh.test", "default", "frontend")
	web := discovery.ServiceIdentity("mesh.test", "default", "web")
	other := discovery.ServiceIdentity("mesh.test", "default", "other")
	// dry is what the dry-run rules decide: "" when the destination has
	// none (the decision reports no dry run), "allow", "deny", or
	// "dry-run deny" when a dry-run rule is what denies.
	for _, c := range []struct {
		dest  string
		req   Request
		allow bool
		dry   string
	}{
		{"default/orders", Request{Principal: fe, Method: "GET", Path: "/api/orders", Headers: map[string]string{"x-request-id": "1"}}, true, "allow"},
		{"default/orders", Request{Principal: fe, Method: "GET", Path: "/api/orders"}, true, "dry-run deny"},
		{"default/orders", Request{Principal: fe, Method: "GET", Path: "/api/admin/users"}, false, "deny"},
		{"default/orders", Request{Principal: other, Method: "GET", Path: "/api/orders"}, false, "deny"},
		{"default/greeter", Request{Principal: fe, Method: "POST", Path: "/helloworld.Greeter/SayHello"}, true, ""},
		{"default/greeter", Request{Principal: web, Method: "POST", Path: "/helloworld.Greeter/SayHello"}, true, ""},
		{"default/greeter", Request{Principal: other, Method: "POST", Path: "/helloworld.Greeter/SayHello"}, false, ""},
		{"default/greeter", Request{Principal: fe, Method: "POST", Path: "/grpc.health.v1.Health/Check"}, false, ""},
	} {
		d, _ := e.Decide(c.dest, "", &c.req)
		dry := ""
		switch {
		case !d.DryRun:
		case d.DryAllow:
			dry = "allow"
		case d.DryRule != nil && d.DryRule.DryRun:
			dry = "dry-run deny"
		default:
			dry = "deny"
		}
		if d.Allow != c.allow || dry != c.dry {
			t.Errorf("%s %+v: allow %v (dry run %q), want %v (dry run %q)", c.dest, c.req, d.Allow, dry, c.allow, c.dry)
		}
	}
}
