package consul

import (
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/policy"
)

// Intentions become rules that decide as Consul would (docs/policy.md,
// "Consul intentions"): exact sources before "*", L4 actions, L7
// permissions, and what cannot be expressed failing closed.
func TestConvertIntentions(t *testing.T) {
	entries := []*api.ServiceIntentionsConfigEntry{{
		Kind: api.ServiceIntentions, Name: "web", ModifyIndex: 7,
		Sources: []*api.SourceIntention{
			{Name: "*", Action: api.IntentionActionAllow, Precedence: 8},
			{Name: "api", Action: api.IntentionActionDeny, Precedence: 9},
			{Name: "admin", Precedence: 9, Permissions: []*api.IntentionPermission{
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/api/", Methods: []string{"GET", "HEAD"}}},
				{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathExact: "/api/secret"}},
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{Header: []api.IntentionHTTPHeaderPermission{
					{Name: "X-Role", Exact: "ops"}, {Name: "x-debug", Present: true, Invert: true},
				}}},
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathRegex: "/v[0-9]+/.*"}},
			}},
			{Name: "auditor", Precedence: 9, Permissions: []*api.IntentionPermission{
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}},
				{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathRegex: "/internal/.*"}},
			}},
			{Name: "remote", Peer: "dc2", Action: api.IntentionActionAllow, Precedence: 9},
		},
	}, {
		Kind: api.ServiceIntentions, Name: "*", Sources: []*api.SourceIntention{{Name: "*", Action: api.IntentionActionDeny}},
	}, {
		Kind: api.ServiceIntentions, Name: "db", Namespace: "data",
		Sources: []*api.SourceIntention{{Name: "web", Namespace: "default", Action: api.IntentionActionAllow, Precedence: 9}},
	}}
	files, notes := ConvertIntentions(entries)
	if len(files) != 2 || files[0].Name != "consul-intentions:data/db.hcl" || files[1].Name != "consul-intentions:default/web.hcl" {
		t.Fatalf("files = %v", names(files))
	}
	if len(notes) != 4 {
		t.Fatalf("notes = %q", notes)
	}
	cfg, diags := config.Parse(append(files, config.File{Name: "consul.hcl", Content: []byte("consul {}\n")}))
	if len(diags) > 0 {
		t.Fatalf("%s\n%s", diags.Error(), files[1].Content)
	}
	e := policy.NewEvaluator(cfg, discovery.NewSnapshot(nil, nil))
	id := func(ns, name string) string { return discovery.ServiceIdentity(config.DefaultTrustDomain, ns, name) }
	for _, c := range []struct {
		name, dest, src, method, path string
		headers                       map[string]string
		allow                         bool
	}{
		{"exact deny before the wildcard allow", "default/web", id("default", "api"), "GET", "/", nil, false},
		{"wildcard allow", "default/web", id("default", "other"), "POST", "/x", nil, true},
		{"plaintext is not \"*\"", "default/web", "", "GET", "/", nil, false},
		{"L7 allow", "default/web", id("default", "admin"), "GET", "/api/users", nil, true},
		{"L7 method", "default/web", id("default", "admin"), "POST", "/api/users", nil, false},
		{"L7 deny", "default/web", id("default", "admin"), "GET", "/api/secret", nil, false},
		{"L7 headers", "default/web", id("default", "admin"), "PUT", "/x", map[string]string{"x-role": "ops"}, true},
		{"L7 inverted present", "default/web", id("default", "admin"), "PUT", "/x", map[string]string{"x-role": "ops", "x-debug": "1"}, false},
		{"an allow permission left out", "default/web", id("default", "admin"), "GET", "/v1/x", nil, false},
		{"a deny permission applying without its regex", "default/web", id("default", "auditor"), "GET", "/public", nil, false},
		{"another namespace's destination", "data/db", id("default", "web"), "GET", "/", nil, true},
		{"not allowed", "data/db", id("default", "api"), "GET", "/", nil, false},
	} {
		d, _ := e.Decide(c.dest, "", &policy.Request{Principal: c.src, Method: c.method, Path: c.path, Headers: c.headers})
		if d.Allow != c.allow {
			t.Errorf("%s: allow = %v, want %v", c.name, d.Allow, c.allow)
		}
	}
	if !strings.Contains(string(files[1].Content), "modify index 7") {
		t.Errorf("the generated file does not say where it comes from:\n%s", files[1].Content)
	}
}

func names(fs []config.File) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Name)
	}
	return out
}
