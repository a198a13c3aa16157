package policy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// The files of examples/policy load without a diagnostic and decide what
// their comments say.
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
	if len(diags) > 0 {
		t.Fatalf("diagnostics: %s", diags.Error())
	}
	e := NewEvaluator(cfg, discovery.NewSnapshot(nil, file.Convert(cfg)))
	fe := discovery.ServiceIdentity("mesh.test", "default", "frontend")
	other := discovery.ServiceIdentity("mesh.test", "default", "other")
	for _, c := range []struct {
		dest   string
		req    Request
		allow  bool
		dryRun bool
	}{
		{"default/orders", Request{Principal: fe, Method: "GET", Path: "/api/orders", Headers: map[string]string{"x-request-id": "1"}}, true, true},
		{"default/orders", Request{Principal: fe, Method: "GET", Path: "/api/orders"}, true, false},
		{"default/orders", Request{Principal: fe, Method: "GET", Path: "/api/admin/users"}, false, false},
		{"default/orders", Request{Principal: other, Method: "GET", Path: "/api/orders"}, false, false},
		{"default/greeter", Request{Principal: fe, Method: "POST", Path: "/helloworld.Greeter/SayHello"}, true, true},
		{"default/greeter", Request{Principal: fe, Method: "POST", Path: "/grpc.health.v1.Health/Check"}, false, false},
	} {
		d, _ := e.Decide(c.dest, "", &c.req)
		if d.Allow != c.allow || (d.DryRun && d.DryAllow != c.dryRun) {
			t.Errorf("%s %+v: allow %v (dry run %v %v), want %v (dry run %v)", c.dest, c.req, d.Allow, d.DryRun, d.DryAllow, c.allow, c.dryRun)
		}
	}
}
