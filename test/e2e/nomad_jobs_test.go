package e2e

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/bowlinemesh/bowline/test/meshtest"
)

// The job files of examples/nomad parse as HCL and have the structure the
// README describes: bowline server in a job of its own; in each application
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
	}
	for _, name := range []string{"bowline", "api", "web"} {
		if jobs[name] == nil {
			t.Fatalf("examples/nomad lacks the job %q (have %v)", name, slices.Sorted(maps.Keys(jobs)))
		}
	}

	t.Run("bowline", func(t *testing.T) {
		var server *hclsyntax.Block
		var xds bool
		for _, g := range nomadBlocks(jobs["bowline"].Body, "group") {
			for _, s := range nomadBlocks(g.Body, "service") {
				xds = xds || (nomadString(t, s.Body, "name") == "bowline-xds" && nomadString(t, s.Body, "provider") == "nomad")
			}
			for _, task := range nomadBlocks(g.Body, "task") {
				if cmd, args := nomadCommand(t, task); cmd == "bowline" && len(args) > 0 && args[0] == "server" {
					server = task
				}
			}
		}
		if server == nil || !xds {
			t.Fatalf("want a task running `bowline server` and the service bowline-xds (task found: %v, service: %v)", server != nil, xds)
		}
		var config string
		for _, tmpl := range nomadBlocks(server.Body, "template") {
			config += nomadTemplateSource(tmpl.Body, "data")
		}
		if !strings.Contains(config, "nomad {") {
			t.Fatalf("the server's configuration template has no nomad block:\n%s", config)
		}
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
// (an argument with ${NOMAD_...} is returned as its source text).
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
			args = append(args, nomadSource(e.Range()))
		}
	}
	return cmd, args
}
