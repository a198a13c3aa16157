package e2e

import (
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/test/meshtest"
)

// The job files of examples/nomad parse as HCL and have the structure the
// README describes: bowline server and bowline policyd in a job of their own,
// policyd registered as the Nomad service the mesh configuration names; in
// each application
// job, a group with the application task and a prestart sidecar task running
// `bowline envoy`, and a native service whose meta declares the mesh
// attributes, with the sidecar port a port of the group.
func TestNomadJobFiles(t *testing.T) {
	dir := filepath.Join(meshtest.RepoRoot(t), "examples", "nomad")
	files, err := filepath.Glob(filepath.Join(dir, "*.nomad.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	jobs := map[string]*hclsyntax.Block{}
	locals := map[string]*hcl.EvalContext{} // by job: the file's locals, for its templates
	parser := hclparse.NewParser()
	for _, f := range files {
		file, diags := parser.ParseHCLFile(f)
		if diags.HasErrors() {
			t.Fatalf("%s: %s", f, diags.Error())
		}
		body := file.Body.(*hclsyntax.Body)
		js := nomadBlocks(body, "job")
		if len(js) != 1 || len(js[0].Labels) != 1 {
			t.Fatalf("%s: want one job block with a name", f)
		}
		jobs[js[0].Labels[0]] = js[0]
		locals[js[0].Labels[0]] = nomadLocals(t, body)
	}
	for _, name := range []string{"bowline", "api", "web"} {
		if jobs[name] == nil {
			t.Fatalf("examples/nomad lacks the job %q (have %v)", name, slices.Sorted(maps.Keys(jobs)))
		}
	}

	t.Run("bowline", func(t *testing.T) {
		var server, policyd *hclsyntax.Block
		var policydGroup *hclsyntax.Block
		var xds bool
		for _, g := range nomadBlocks(jobs["bowline"].Body, "group") {
			for _, s := range nomadBlocks(g.Body, "service") {
				xds = xds || (nomadString(t, s.Body, "name") == "bowline-xds" && nomadString(t, s.Body, "provider") == "nomad")
			}
			for _, task := range nomadBlocks(g.Body, "task") {
				cmd, args := nomadCommand(t, task)
				if cmd == "bowline" && len(args) > 0 && args[0] == "server" {
					server = task
				}
				if cmd == "bowline" && len(args) > 0 && args[0] == "policyd" {
					policyd, policydGroup = task, g
				}
			}
		}
		if server == nil || !xds {
			t.Fatalf("want a task running `bowline server` and the service bowline-xds (task found: %v, service: %v)", server != nil, xds)
		}
		if policyd == nil {
			t.Fatal("want a task running `bowline policyd`")
		}
		serverConfig := nomadTaskConfig(t, locals["bowline"], server)
		if !strings.Contains(serverConfig, "nomad {") {
			t.Fatalf("the server's configuration template has no nomad block:\n%s", serverConfig)
		}

		t.Run("policyd", func(t *testing.T) {
			_, args := nomadCommand(t, policyd)
			// Every flag is one `bowline policyd` has.
			_, help, _ := meshtest.Run(t, "policyd", "-h")
			for _, a := range args[1:] {
				if name, ok := strings.CutPrefix(a, "--"); ok && !strings.Contains(help, "\n  -"+name+" ") && !strings.Contains(help, "\n  -"+name+"\n") {
					t.Errorf("bowline policyd has no flag %s:\n%s", a, help)
				}
			}
			// The same configuration directory as the server, rendered from
			// the same text.
			_, serverArgs := nomadCommand(t, server)
			if dir := nomadFlag(args, "--config"); dir == "" || dir != nomadFlag(serverArgs, "--config") {
				t.Errorf("policyd --config %q, want the server's layout %q", dir, nomadFlag(serverArgs, "--config"))
			}
			if cfg := nomadTaskConfig(t, locals["bowline"], policyd); cfg != serverConfig {
				t.Errorf("policyd's configuration template differs from the server's:\n%s\n---\n%s", cfg, serverConfig)
			}

			// Its ports are ports of its group: gRPC on every address (the
			// sidecars dial it), HTTP on loopback.
			var ports []string
			for _, n := range nomadBlocks(policydGroup.Body, "network") {
				for _, p := range nomadBlocks(n.Body, "port") {
					ports = append(ports, p.Labels[0])
				}
			}
			grpcLabel := nomadPortLabel(nomadFlag(args, "--grpc-addr"), "0.0.0.0")
			httpLabel := nomadPortLabel(nomadFlag(args, "--http-addr"), "127.0.0.1")
			if !slices.Contains(ports, grpcLabel) || !slices.Contains(ports, httpLabel) {
				t.Fatalf("policyd --grpc-addr %q and --http-addr %q: want 0.0.0.0:${NOMAD_PORT_<label>} and 127.0.0.1:${NOMAD_PORT_<label>} with ports of the group (%v)",
					nomadFlag(args, "--grpc-addr"), nomadFlag(args, "--http-addr"), ports)
			}

			// The group registers its gRPC port as the Nomad service
			// bowline-policyd, and the mesh configuration names that service.
			var registered bool
			for _, s := range nomadBlocks(policydGroup.Body, "service") {
				registered = registered || nomadString(t, s.Body, "name") == "bowline-policyd" &&
					nomadString(t, s.Body, "provider") == "nomad" && nomadString(t, s.Body, "port") == grpcLabel
			}
			if !registered {
				t.Fatalf("the policyd group does not register its gRPC port %q as the nomad service bowline-policyd", grpcLabel)
			}
			if len(nomadBlocks(policyd.Body, "identity")) != 1 {
				t.Error("the policyd task has no identity block: it reads Nomad's services as the server does")
			}
			// Rendered as on a dev agent, whose address is 127.0.0.1.
			rendered := regexp.MustCompile(`{{[^}]*}}`).ReplaceAllString(serverConfig, "127.0.0.1")
			cfg, diags := config.Parse([]config.File{{Name: "mesh.hcl", Content: []byte(rendered)}})
			if diags.HasErrors() {
				t.Fatalf("the configuration template does not parse: %s\n%s", diags.Error(), rendered)
			}
			if cfg.Nomad == nil || cfg.Nomad.Address != "http://127.0.0.1:4646" {
				t.Fatalf("the configuration's nomad block: %+v", cfg.Nomad)
			}
			if p := cfg.Mesh.Policyd; p == nil || p.Service == nil || *p.Service != (config.ServiceRef{Namespace: "default", Name: "bowline-policyd"}) {
				t.Fatalf("mesh { policyd { ... } } = %+v, want service default/bowline-policyd", p)
			}
		})
	})

	for _, name := range []string{"api", "web"} {
		t.Run(name, func(t *testing.T) {
			groups := nomadBlocks(jobs[name].Body, "group")
			if len(groups) != 1 {
				t.Fatalf("want one group, got %d", len(groups))
			}
			g := groups[0]
			var ports []string
			for _, n := range nomadBlocks(g.Body, "network") {
				for _, p := range nomadBlocks(n.Body, "port") {
					ports = append(ports, p.Labels[0])
				}
			}
			svcs := nomadBlocks(g.Body, "service")
			if len(svcs) != 1 {
				t.Fatalf("want one service block, got %d", len(svcs))
			}
			svc := svcs[0].Body
			if nomadString(t, svc, "name") != name || nomadString(t, svc, "provider") != "nomad" || !slices.Contains(ports, nomadString(t, svc, "port")) {
				t.Fatalf("service block: want name %q, provider nomad and a port of the group (%v)", name, ports)
			}
			metas := nomadBlocks(svc, "meta")
			if len(metas) != 1 {
				t.Fatal("the service block has no meta block")
			}
			meta := map[string]string{}
			for k := range metas[0].Body.Attributes {
				meta[k] = nomadString(t, metas[0].Body, k)
			}
			if meta["protocol"] == "" || meta["version"] == "" || !slices.Contains(ports, meta["bowline-sidecar-port"]) {
				t.Fatalf("meta %v: want protocol, version and bowline-sidecar-port naming a port of the group (%v)", meta, ports)
			}
			if name == "web" && meta["bowline-upstreams"] != "api:9191" {
				t.Fatalf("web's meta %v: want the upstream api on local port 9191", meta)
			}

			var app, sidecar int
			for _, task := range nomadBlocks(g.Body, "task") {
				cmd, args := nomadCommand(t, task)
				lc := nomadBlocks(task.Body, "lifecycle")
				if len(lc) == 0 {
					app++
					continue
				}
				if nomadString(t, lc[0].Body, "hook") != "prestart" || !nomadBool(t, lc[0].Body, "sidecar") {
					t.Fatalf("task %s: want lifecycle { hook = \"prestart\" sidecar = true }", task.Labels[0])
				}
				if cmd != "bowline" || len(args) < 1 || args[0] != "envoy" {
					t.Fatalf("sidecar task %s runs %s %v, want bowline envoy", task.Labels[0], cmd, args)
				}
				if i := slices.Index(args, "--service"); i >= 0 && (i+1 >= len(args) || args[i+1] != name) {
					t.Fatalf("sidecar task of %s: --service %v", name, args)
				}
				// It finds xDS through a template reading the bowline-xds
				// registration.
				var found bool
				for _, tmpl := range nomadBlocks(task.Body, "template") {
					found = found || strings.Contains(nomadTemplateSource(tmpl.Body, "data"), `nomadService "bowline-xds"`) && nomadBool(t, tmpl.Body, "env")
				}
				if !found {
					t.Fatalf("sidecar task %s: no env template reading the bowline-xds service", task.Labels[0])
				}
				sidecar++
			}
			if app != 1 || sidecar != 1 {
				t.Fatalf("want one application task and one sidecar task, got %d and %d", app, sidecar)
			}
			for _, label := range []string{"sidecar", "http", "envoy_admin"} {
				if !slices.Contains(ports, label) {
					t.Errorf("the group lacks the port %q that bowline envoy reads", label)
				}
			}
		})
	}
}

// nomadLocals evaluates a job file's locals blocks (literals only) into
// the context its templates are evaluated in.
func nomadLocals(t *testing.T, body *hclsyntax.Body) *hcl.EvalContext {
	t.Helper()
	vals := map[string]cty.Value{}
	for _, b := range nomadBlocks(body, "locals") {
		for name := range b.Body.Attributes {
			v, _ := nomadValue(t, b.Body, name)
			vals[name] = v
		}
	}
	return &hcl.EvalContext{Variables: map[string]cty.Value{"local": cty.ObjectVal(vals)}}
}

// nomadTaskConfig returns what a task's templates render into its
// configuration directory (local/config), concatenated: the value of each
// data attribute (a local, or literal text), or its source where it cannot
// be evaluated here.
func nomadTaskConfig(t *testing.T, ctx *hcl.EvalContext, task *hclsyntax.Block) string {
	t.Helper()
	var out string
	for _, tmpl := range nomadBlocks(task.Body, "template") {
		if !strings.HasPrefix(nomadString(t, tmpl.Body, "destination"), "local/config/") {
			continue
		}
		a, ok := tmpl.Body.Attributes["data"]
		if !ok {
			continue
		}
		if v, diags := a.Expr.Value(ctx); !diags.HasErrors() && v.Type() == cty.String {
			out += v.AsString()
		} else {
			out += nomadSource(a.SrcRange)
		}
	}
	return out
}

// nomadFlag returns the value that follows a flag in args ("" if none).
func nomadFlag(args []string, flag string) string {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return args[i+1]
}

// nomadPortLabel returns <label> of an address "<host>:${NOMAD_PORT_<label>}"
// with the given host ("" otherwise).
func nomadPortLabel(addr, host string) string {
	label, ok := strings.CutPrefix(addr, host+":${NOMAD_PORT_")
	if !ok || !strings.HasSuffix(label, "}") {
		return ""
	}
	return strings.TrimSuffix(label, "}")
}

func nomadBlocks(body *hclsyntax.Body, typ string) []*hclsyntax.Block {
	var out []*hclsyntax.Block
	for _, b := range body.Blocks {
		if b.Type == typ {
			out = append(out, b)
		}
	}
	return out
}

// nomadValue evaluates a literal attribute (no variables).
func nomadValue(t *testing.T, body *hclsyntax.Body, name string) (cty.Value, bool) {
	t.Helper()
	a, ok := body.Attributes[name]
	if !ok {
		return cty.NilVal, false
	}
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		t.Fatalf("%s: %s", name, diags.Error())
	}
	return v, true
}

func nomadString(t *testing.T, body *hclsyntax.Body, name string) string {
	t.Helper()
	v, ok := nomadValue(t, body, name)
	if !ok || v.Type() != cty.String {
		return ""
	}
	return v.AsString()
}

func nomadBool(t *testing.T, body *hclsyntax.Body, name string) bool {
	t.Helper()
	v, ok := nomadValue(t, body, name)
	return ok && v.Type() == cty.Bool && v.True()
}

// nomadTemplateSource returns an attribute's source text (templates use
// Nomad's runtime variables, which HCL cannot evaluate here).
func nomadTemplateSource(body *hclsyntax.Body, name string) string {
	a, ok := body.Attributes[name]
	if !ok {
		return ""
	}
	return nomadSource(a.SrcRange)
}

// nomadJobSources holds the job files' text, for nomadSource.
var nomadJobSources = map[string][]byte{}

// nomadSource returns the source text of a range of a job file.
func nomadSource(r hcl.Range) string {
	b, ok := nomadJobSources[r.Filename]
	if !ok {
		b, _ = os.ReadFile(r.Filename)
		nomadJobSources[r.Filename] = b
	}
	return string(r.SliceBytes(b))
}

// nomadCommand returns a task's config command and its literal arguments
// (an argument with ${NOMAD_...} is returned as its source text, without
// the quotes).
func nomadCommand(t *testing.T, task *hclsyntax.Block) (string, []string) {
	t.Helper()
	cfgs := nomadBlocks(task.Body, "config")
	if len(cfgs) != 1 {
		t.Fatalf("task %s: want one config block", task.Labels[0])
	}
	cmd := nomadString(t, cfgs[0].Body, "command")
	a, ok := cfgs[0].Body.Attributes["args"]
	if !ok {
		return cmd, nil
	}
	exprs, diags := hcl.ExprList(a.Expr)
	if diags.HasErrors() {
		t.Fatalf("task %s: args: %s", task.Labels[0], diags.Error())
	}
	var args []string
	for _, e := range exprs {
		if v, diags := e.Value(nil); !diags.HasErrors() && v.Type() == cty.String {
			args = append(args, v.AsString())
		} else {
			args = append(args, strings.Trim(nomadSource(e.Range()), `"`))
		}
	}
	return cmd, args
}
