package config_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/config"
	"github.com/hashicorp/hcl/v2"
)

// issueForm is the service declaration exactly as the file registry's
// documentation shows it.
const issueForm = `service "greeter" {
  namespace = "default"   # optional, default "default"
  protocol  = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 50051
    labels  = { version = "v1" }
  }
}
`

func parse(t *testing.T, files ...config.File) *config.Config {
	t.Helper()
	cfg, diags := config.Parse(files)
	if diags.HasErrors() {
		t.Fatalf("Parse: %s", config.FormatDiagnostics(diags, sourcesOf(files)))
	}
	if cfg == nil {
		t.Fatal("Parse returned no config and no error")
	}
	return cfg
}

func sourcesOf(files []config.File) map[string][]byte {
	m := map[string][]byte{}
	for _, f := range files {
		m[f.Name] = f.Content
	}
	return m
}

func file(name, content string) config.File { return config.File{Name: name, Content: []byte(content)} }

func serviceByName(t *testing.T, cfg *config.Config, ns, name string) *config.ServiceDecl {
	t.Helper()
	for _, s := range cfg.Services {
		if s.Namespace == ns && s.Name == name {
			return s
		}
	}
	t.Fatalf("no service %s/%s in %d services", ns, name, len(cfg.Services))
	return nil
}

func TestDecodeIssueForm(t *testing.T) {
	cfg := parse(t, file("greeter.hcl", issueForm))
	if len(cfg.Services) != 1 {
		t.Fatalf("got %d services, want 1", len(cfg.Services))
	}
	s := cfg.Services[0]
	if s.Name != "greeter" || s.Namespace != "default" || s.Protocol != "grpc" {
		t.Errorf("service = %s/%s %s, want default/greeter grpc", s.Namespace, s.Name, s.Protocol)
	}
	if len(s.Endpoints) != 1 {
		t.Fatalf("got %d endpoints, want 1", len(s.Endpoints))
	}
	e := s.Endpoints[0]
	if e.Address != "127.0.0.1" || e.Port != 50051 {
		t.Errorf("endpoint = %s:%d, want 127.0.0.1:50051", e.Address, e.Port)
	}
	if !reflect.DeepEqual(e.Labels, map[string]string{"version": "v1"}) {
		t.Errorf("endpoint labels = %v, want version=v1", e.Labels)
	}
	if e.Health != "" || e.SidecarPort != 0 || e.Weight != 0 || e.Region != "" || e.Zone != "" {
		t.Errorf("unset endpoint attributes are not zero: %+v", e)
	}
	if s.DeclRange.Filename != "greeter.hcl" || s.DeclRange.Start.Line != 1 {
		t.Errorf("service DeclRange = %v, want greeter.hcl line 1", s.DeclRange)
	}
	if e.DeclRange.Filename != "greeter.hcl" || e.DeclRange.Start.Line != 4 {
		t.Errorf("endpoint DeclRange = %v, want greeter.hcl line 4", e.DeclRange)
	}
	if cfg.Mesh.TrustDomain != config.DefaultTrustDomain {
		t.Errorf("trust domain = %q, want the default %q", cfg.Mesh.TrustDomain, config.DefaultTrustDomain)
	}
	if cfg.Consul != nil {
		t.Errorf("Consul = %+v without a consul block", cfg.Consul)
	}
}

func TestDecodeDefaults(t *testing.T) {
	cfg := parse(t, file("a.hcl", `
service "plain" {
  endpoint {
    address = "10.0.0.1"
    port    = 9000
  }
}
mesh {}
consul {}
`))
	s := serviceByName(t, cfg, "default", "plain")
	if s.Protocol != "tcp" {
		t.Errorf("protocol = %q, want tcp by default", s.Protocol)
	}
	if s.Labels != nil || s.Endpoints[0].Labels != nil {
		t.Errorf("labels = %v / %v, want none", s.Labels, s.Endpoints[0].Labels)
	}
	if cfg.Mesh.TrustDomain != config.DefaultTrustDomain {
		t.Errorf("an empty mesh block gives trust domain %q, want %q", cfg.Mesh.TrustDomain, config.DefaultTrustDomain)
	}
	if cfg.Consul == nil || cfg.Consul.Address != "127.0.0.1:8500" {
		t.Errorf("an empty consul block gives %+v, want address 127.0.0.1:8500", cfg.Consul)
	}
}

func readTestdata(t *testing.T, name string) config.File {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return config.File{Name: name, Content: b}
}

func TestDecodeFullExample(t *testing.T) {
	for _, name := range []string{"full.hcl", "full.hcl.json"} {
		t.Run(name, func(t *testing.T) {
			cfg := parse(t, readTestdata(t, name))
			if cfg.Mesh.TrustDomain != "mesh.example.com" {
				t.Errorf("trust domain = %q", cfg.Mesh.TrustDomain)
			}
			if c := cfg.Consul; c == nil || c.Address != "consul.service:8500" || c.Datacenter != "dc1" || c.KVPrefix != "bowline/config" || c.Token != "" {
				t.Errorf("consul = %+v", c)
			}
			if len(cfg.Services) != 2 {
				t.Fatalf("got %d services, want 2", len(cfg.Services))
			}
			g := serviceByName(t, cfg, "default", "greeter")
			if g.Protocol != "grpc" || len(g.Endpoints) != 1 || g.Endpoints[0].Port != 50051 {
				t.Errorf("greeter = %+v", g)
			}
			f := serviceByName(t, cfg, "shop", "frontend")
			if f.Protocol != "http" || !reflect.DeepEqual(f.Labels, map[string]string{"team": "web", "tier": "edge"}) {
				t.Errorf("frontend protocol %q labels %v", f.Protocol, f.Labels)
			}
			if len(f.Endpoints) != 2 {
				t.Fatalf("frontend has %d endpoints, want 2", len(f.Endpoints))
			}
			e := f.Endpoints[0]
			want := config.EndpointDecl{
				Address: "10.0.0.1", Port: 8080,
				Labels: map[string]string{"version": "v1", "canary": "false", "shard": "3"},
				Health: "degraded", SidecarPort: 21000, Region: "eu-west", Zone: "eu-west-1a", Weight: 10,
				DeclRange: e.DeclRange,
			}
			if !reflect.DeepEqual(*e, want) {
				t.Errorf("first endpoint:\n got  %+v\n want %+v", *e, want)
			}
			if e2 := f.Endpoints[1]; e2.Address != "frontend-2.internal" || e2.Port != 8080 || e2.Labels != nil {
				t.Errorf("second endpoint = %+v", e2)
			}
			ups := map[string]config.UpstreamDecl{}
			for _, u := range f.Upstreams {
				ups[u.Name] = config.UpstreamDecl{Name: u.Name, Namespace: u.Namespace, LocalPort: u.LocalPort}
			}
			wantUps := map[string]config.UpstreamDecl{
				"greeter":  {Name: "greeter", Namespace: "default", LocalPort: 9001},
				"invoices": {Name: "invoices", Namespace: "billing", LocalPort: 9002},
				"cart":     {Name: "cart", Namespace: "", LocalPort: 9003}, // the service's namespace applies later
			}
			if !reflect.DeepEqual(ups, wantUps) {
				t.Errorf("upstreams:\n got  %+v\n want %+v", ups, wantUps)
			}
			for _, s := range cfg.Services {
				if s.DeclRange.Filename != name {
					t.Errorf("service %s DeclRange names %q, want %q", s.Name, s.DeclRange.Filename, name)
				}
			}
		})
	}
}

// The native and JSON syntaxes of the same configuration decode to the same
// declarations.
func TestDecodeJSONEquivalent(t *testing.T) {
	native := parse(t, readTestdata(t, "full.hcl"))
	js := parse(t, readTestdata(t, "full.hcl.json"))
	norm := func(cfg *config.Config) map[string]config.ServiceDecl {
		out := map[string]config.ServiceDecl{}
		for _, s := range cfg.Services {
			c := *s
			c.DeclRange = hcl.Range{}
			c.Endpoints, c.Upstreams = nil, nil
			for _, e := range s.Endpoints {
				ec := *e
				ec.DeclRange = hcl.Range{}
				c.Endpoints = append(c.Endpoints, &ec)
			}
			for _, u := range s.Upstreams {
				uc := *u
				uc.DeclRange = hcl.Range{}
				c.Upstreams = append(c.Upstreams, &uc)
			}
			out[s.Namespace+"/"+s.Name] = c
		}
		return out
	}
	if a, b := norm(native), norm(js); !reflect.DeepEqual(a, b) {
		t.Errorf("native and JSON decode differently:\n native %+v\n json   %+v", a, b)
	}
	if native.Mesh.TrustDomain != js.Mesh.TrustDomain {
		t.Errorf("trust domains differ: %q vs %q", native.Mesh.TrustDomain, js.Mesh.TrustDomain)
	}
	nc, jc := *native.Consul, *js.Consul
	nc.DeclRange, jc.DeclRange = hcl.Range{}, hcl.Range{}
	if nc != jc {
		t.Errorf("consul blocks differ: %+v vs %+v", nc, jc)
	}
}

func TestDecodeSameNameInTwoNamespaces(t *testing.T) {
	cfg := parse(t,
		file("a.hcl", `service "web" {}`),
		file("b.hcl", `service "web" { namespace = "prod" }`),
		file("c.hcl", `service "api" { namespace = "prod" }`),
	)
	serviceByName(t, cfg, "default", "web")
	serviceByName(t, cfg, "prod", "web")
	serviceByName(t, cfg, "prod", "api")
}

type badCase struct {
	name    string
	files   []config.File
	file    string // of the diagnostic
	line    int
	summary string
}

func badCases() []badCase {
	one := func(name, src, summary string, line int) badCase {
		return badCase{name: name, files: []config.File{file("svc.hcl", src)}, file: "svc.hcl", line: line, summary: summary}
	}
	return []badCase{
		one("unknown top-level block", `service "a" {
  protocol = "http"
}
servce "x" {
}
`, "Unsupported block type", 4),
		one("unknown block in service", `service "a" {
  protocol = "http"
  endpoints {
    address = "10.0.0.1"
    port    = 80
  }
}
`, "Unsupported block type", 3),
		one("unknown attribute", `service "a" {
  prtocol = "http"
}
`, "Unsupported argument", 2),
		one("bad protocol", `service "a" {
  namespace = "default"
  protocol  = "websocket"
}
`, "Invalid protocol", 3),
		one("protocol is case-sensitive", `service "a" {
  protocol = "GRPC"
}
`, "Invalid protocol", 2),
		one("port 0", `service "a" {
  endpoint {
    address = "10.0.0.1"
    port    = 0
  }
}
`, "Invalid port", 4),
		one("port 70000", `service "a" {
  protocol = "http"
  endpoint {
    address = "10.0.0.1"
    port    = 70000
  }
}
`, "Invalid port", 5),
		one("negative port", `service "a" {
  endpoint {
    address = "10.0.0.1"
    port    = -1
  }
}
`, "Invalid port", 4),
		one("port not a number", `service "a" {
  endpoint {
    address = "10.0.0.1"
    port    = "http"
  }
}
`, "Unsuitable value type", 4),
		one("missing port", `service "a" {
  protocol = "http"

  endpoint {
    address = "10.0.0.1"
  }
}
`, "Missing required argument", 4),
		one("missing address", `service "a" {
  endpoint {
    port = 80
  }
}
`, "Missing required argument", 2),
		one("bad address", `service "a" {
  endpoint {
    address = "not an address!"
    port    = 80
  }
}
`, "Invalid address", 3),
		one("address with a port", `service "a" {
  endpoint {
    address = "10.0.0.1:80"
    port    = 80
  }
}
`, "Invalid address", 3),
		one("duplicate endpoint", `service "a" {
  endpoint {
    address = "10.0.0.1"
    port    = 80
  }
  endpoint {
    address = "10.0.0.1"
    port    = 80
  }
}
`, "Duplicate endpoint", 6),
		one("sidecar port 70000", `service "a" {
  endpoint {
    address      = "10.0.0.1"
    port         = 80
    sidecar_port = 70000
  }
}
`, "Invalid port", 5),
		one("bad health", `service "a" {
  endpoint {
    address = "10.0.0.1"
    port    = 80
    health  = "critical-ish"
  }
}
`, "Invalid health", 5),
		one("weight 0", `service "a" {
  endpoint {
    address = "10.0.0.1"
    port    = 80
    weight  = 0
  }
}
`, "Invalid weight", 5),
		one("weight 129", `service "a" {
  endpoint {
    address = "10.0.0.1"
    port    = 80
    weight  = 129
  }
}
`, "Invalid weight", 5),
		one("labels a string", `service "a" {
  endpoint {
    address = "10.0.0.1"
    port    = 80
    labels  = "version=v1"
  }
}
`, "Invalid labels", 5),
		one("labels a list", `service "a" {
  labels = ["v1"]
}
`, "Invalid labels", 2),
		one("label value a list", `service "a" {
  labels = { version = ["v1"] }
}
`, "Invalid labels", 2),
		one("label value null", `service "a" {
  labels = { version = null }
}
`, "Invalid labels", 2),
		one("bad service name", `service "a b" {
}
`, "Invalid service name", 1),
		one("bad namespace", `service "a" {
  namespace = "no/slashes"
}
`, "Invalid name", 2),
		one("upstream without local_port", `service "a" {
  upstream "b" {
  }
}
`, "Missing required argument", 2),
		one("upstream local_port 0", `service "a" {
  upstream "b" {
    local_port = 0
  }
}
`, "Invalid port", 3),
		one("bad trust domain", `mesh {
  trust_domain = "Not A Domain"
}
`, "Invalid trust domain", 2),
		one("two mesh blocks in one file", `mesh {
}

mesh {
}
`, "Duplicate mesh block", 4),
		one("two consul blocks in one file", `consul {
}
consul {
}
`, "Duplicate consul block", 3),
		one("duplicate service in one file", `service "a" {
}
service "a" {
  namespace = "default"
}
`, "Duplicate service", 3),
		one("variables are not allowed", `service "a" {
  endpoint {
    address = "10.0.0.1"
    port    = var.port
  }
}
`, "Variables not allowed", 4),
		one("syntax error: missing value", `service "a" {
  protocol = "http"
  endpoint {
    address =
    port    = 80
  }
}
`, "Invalid expression", 4),
		one("syntax error: unclosed string", `service "a" {
  protocol = "http
}
`, "Unterminated template string", 2),
		{
			name: "duplicate service across two files",
			files: []config.File{
				file("a.hcl", issueForm),
				file("b.hcl", `# another team's file

service "greeter" {
  protocol = "http"
}
`),
			},
			file: "b.hcl", line: 3, summary: "Duplicate service",
		},
		{
			name: "duplicate mesh across two files",
			files: []config.File{
				file("00-mesh.hcl", `mesh { trust_domain = "a.example" }`),
				file("10-mesh.hcl", "\n\nmesh {\n  trust_domain = \"b.example\"\n}\n"),
			},
			file: "10-mesh.hcl", line: 3, summary: "Duplicate mesh block",
		},
		{
			name: "duplicate consul across two files",
			files: []config.File{
				file("a.hcl", "consul {}\n"),
				file("b.hcl", "service \"x\" {}\nconsul {}\n"),
			},
			file: "b.hcl", line: 2, summary: "Duplicate consul block",
		},
		{
			name: "bad port in JSON",
			files: []config.File{file("svc.hcl.json", `{
  "service": {
    "a": {
      "endpoint": {
        "address": "10.0.0.1",
        "port": 0
      }
    }
  }
}
`)},
			file: "svc.hcl.json", line: 6, summary: "Invalid port",
		},
		{
			name: "labels not a map in JSON",
			files: []config.File{file("svc.hcl.json", `{
  "service": {
    "a": {
      "labels": "v1"
    }
  }
}
`)},
			file: "svc.hcl.json", line: 4, summary: "Invalid labels",
		},
		{
			name: "JSON syntax error",
			files: []config.File{file("svc.hcl.json", `{
  "service": {
    "a": {
      "protocol": "http",
    }
  }
}
`)},
			file: "svc.hcl.json", line: 4, summary: "Trailing comma in object",
		},
	}
}

func TestDecodeBadInputs(t *testing.T) {
	for _, tt := range badCases() {
		t.Run(tt.name, func(t *testing.T) {
			cfg, diags := config.Parse(tt.files)
			if !diags.HasErrors() {
				t.Fatalf("no error for bad input; config = %+v", cfg)
			}
			var found bool
			for _, d := range diags {
				if d.Severity != hcl.DiagError {
					continue
				}
				if d.Subject == nil {
					t.Errorf("diagnostic %q has no position", d.Summary)
					continue
				}
				if d.Summary == tt.summary && d.Subject.Filename == tt.file && d.Subject.Start.Line == tt.line {
					found = true
				}
			}
			if !found {
				t.Errorf("want %q at %s:%d, got:\n%s", tt.summary, tt.file, tt.line, config.FormatDiagnostics(diags, sourcesOf(tt.files)))
			}
		})
	}
}

// Every problem of a file is reported, not only the first.
func TestDecodeCollectsAllDiagnostics(t *testing.T) {
	files := []config.File{
		file("a.hcl", `service "a" {
  protocol = "websocket"
  endpoint {
    address = "bad address"
    port    = 0
  }
}
`),
		file("b.hcl", `service "b" {
  bogus = 1
}
`),
	}
	_, diags := config.Parse(files)
	type pos struct {
		file, summary string
		line          int
	}
	got := map[pos]bool{}
	for _, d := range diags {
		if d.Subject != nil {
			got[pos{d.Subject.Filename, d.Summary, d.Subject.Start.Line}] = true
		}
	}
	for _, want := range []pos{
		{"a.hcl", "Invalid protocol", 2},
		{"a.hcl", "Invalid address", 4},
		{"a.hcl", "Invalid port", 5},
		{"b.hcl", "Unsupported argument", 2},
	} {
		if !got[want] {
			t.Errorf("missing %+v in:\n%s", want, config.FormatDiagnostics(diags, sourcesOf(files)))
		}
	}
}

func TestDecodeDiagnosticMentionsBadValue(t *testing.T) {
	_, diags := config.Parse([]config.File{file("a.hcl", `service "a" {
  protocol = "websocket"
}
`)})
	if len(diags) == 0 || !strings.Contains(diags[0].Detail, `"websocket"`) || !strings.Contains(diags[0].Detail, `"grpc"`) {
		t.Errorf("detail should quote the bad value and the allowed ones: %v", diags)
	}
}
