package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// nomadTaskEnv is what Nomad sets in a sidecar task of group "web" of job
// "shop" whose network declares ports sidecar, http, envoy_admin and up_api.
var nomadTaskEnv = map[string]string{
	"NOMAD_JOB_NAME":          "shop",
	"NOMAD_GROUP_NAME":        "web",
	"NOMAD_TASK_NAME":         "sidecar",
	"NOMAD_NAMESPACE":         "prod",
	"NOMAD_ALLOC_ID":          "5e2ad6b4-1c1c-4f1e-8c2a-7b7f0c9e1a11",
	"NOMAD_TASK_DIR":          "/alloc/sidecar/local",
	"NOMAD_PORT_sidecar":      "21000",
	"NOMAD_HOST_PORT_sidecar": "31000",
	"NOMAD_PORT_http":         "8080",
	"NOMAD_ADDR_http":         "127.0.0.1:8080",
	"NOMAD_PORT_envoy_admin":  "19005",
	"NOMAD_PORT_up_api":       "9191",
	"NOMAD_META_version":      "v3",
	"BOWLINE_XDS_ADDR":        "10.0.0.1:15010",
}

func TestNomadEnvoyResolvesTheTaskEnvironment(t *testing.T) {
	type want struct {
		service, namespace, nodeID, xds, version, upstreams, path string
		inbound, local, admin                                     uint32
		extra                                                     []string
	}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want want
	}{{
		name: "everything from the Nomad task",
		env:  nomadTaskEnv,
		args: []string{"--upstream", "api:up_api", "--upstream", "payments/db:9292"},
		want: want{service: "web", namespace: "prod", nodeID: "web.prod~5e2ad6b4-1c1c-4f1e-8c2a-7b7f0c9e1a11", xds: "10.0.0.1:15010",
			version: "v3", upstreams: "api:9191,payments/db:9292", path: "/alloc/sidecar/local/bowline-envoy.json",
			inbound: 21000, local: 8080, admin: 19005},
	}, {
		name: "flags win over the environment; labels and numbers; Envoy's own flags after --",
		env:  nomadEnvWith(nomadTaskEnv, map[string]string{"NOMAD_PORT_app": "9000", "NOMAD_PORT_envoy_admin_2": "19010"}),
		args: []string{"--service", "checkout", "--namespace", "shop", "--xds-addr", "bowline.service.consul:15010", "--node-id", "n1",
			"--inbound-port", "30000", "--local-port", "app", "--admin-port", "envoy-admin-2", "--version", "v4",
			"--bootstrap-path", "/tmp/b.json", "--", "--log-level", "debug"},
		want: want{service: "checkout", namespace: "shop", nodeID: "n1", xds: "bowline.service.consul:15010", version: "v4",
			path: "/tmp/b.json", inbound: 30000, local: 9000, admin: 19010, extra: []string{"--log-level", "debug"}},
	}, {
		name: "the group name, else the job name",
		env:  map[string]string{"NOMAD_JOB_NAME": "batch", "NOMAD_ALLOC_ID": "a1"},
		want: want{service: "batch", namespace: "default", nodeID: "batch.default~a1", xds: "127.0.0.1:15010"},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o, err := parseEnvoyFlags(c.args, nomadEnvFrom(c.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			got := want{service: o.Service, namespace: o.Namespace, nodeID: o.NodeID, xds: o.XDSAddr, version: o.Version,
				upstreams: o.Upstreams, path: o.BootstrapPath, inbound: o.InboundPort, local: o.LocalPort, admin: o.AdminPort, extra: o.EnvoyArgs}
			if c.want.path == "" {
				c.want.path = got.path // a temporary file: checked below
				if !strings.HasPrefix(got.path, os.TempDir()) {
					t.Errorf("bootstrap path %s is not in the temporary directory", got.path)
				}
			}
			if len(got.extra) == 0 {
				got.extra = nil
			}
			if got.service != c.want.service || got.namespace != c.want.namespace || got.nodeID != c.want.nodeID ||
				got.xds != c.want.xds || got.version != c.want.version || got.upstreams != c.want.upstreams ||
				got.path != c.want.path || got.inbound != c.want.inbound || got.local != c.want.local ||
				got.admin != c.want.admin || !slices.Equal(got.extra, c.want.extra) {
				t.Fatalf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}

	// Outside Nomad: a random node id, the catalog's ports, Envoy's
	// default admin port.
	o, err := parseEnvoyFlags([]string{"--service", "web"}, nomadEnvFrom(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(o.NodeID, "web.default~") || o.InboundPort != 0 || o.LocalPort != 0 || o.AdminPort != 0 {
		t.Fatalf("outside Nomad: %+v", o)
	}
}

func TestNomadEnvoyReportsWhatIsMissing(t *testing.T) {
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no service", nil, nil, "--service"},
		{"unknown port label", nomadTaskEnv, []string{"--inbound-port", "mesh"}, `NOMAD_PORT_mesh is not set: declare port "mesh"`},
		{"bad port", nomadTaskEnv, []string{"--local-port", "70000"}, `"70000" is not a port`},
		{"bad port value in the environment", map[string]string{"NOMAD_GROUP_NAME": "web", "NOMAD_PORT_sidecar": "x"}, nil, `NOMAD_PORT_sidecar="x" is not a port`},
		{"bad upstream", nomadTaskEnv, []string{"--upstream", "api"}, "NAME:PORT"},
		{"unknown upstream label", nomadTaskEnv, []string{"--upstream", "api:up_nope"}, "NOMAD_PORT_up_nope is not set"},
		{"bad xds address", nomadTaskEnv, []string{"--xds-addr", "nowhere"}, "--xds-addr"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseEnvoyFlags(c.args, nomadEnvFrom(c.env), io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

// setTaskEnv sets the Nomad task environment for runEnvoy, with a task
// directory of its own.
func setTaskEnv(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for k, v := range nomadTaskEnv {
		t.Setenv(k, v)
	}
	t.Setenv("NOMAD_TASK_DIR", dir)
	return dir
}

func TestNomadEnvoyWithoutEnvoy(t *testing.T) {
	dir := setTaskEnv(t)
	t.Setenv("PATH", t.TempDir()) // no envoy there
	saved := execEnvoy
	execEnvoy = func(string, []string, []string) error { t.Fatal("exec without an envoy binary"); return nil }
	t.Cleanup(func() { execEnvoy = saved })

	var stdout, stderr bytes.Buffer
	err := runEnvoy(context.Background(), nil, &stdout, &stderr)
	if !errors.Is(err, errEnvoyMissing) {
		t.Fatalf("error %v, want envoy not found", err)
	}
	path := filepath.Join(dir, "bowline-envoy.json")
	for _, want := range []string{`"envoy"`, "PATH", "--envoy-bin", path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	// The bootstrap is there, for a user who runs Envoy another way.
	var doc struct {
		Node struct {
			ID       string         `json:"id"`
			Metadata map[string]any `json:"metadata"`
		} `json:"node"`
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Node.ID != "web.prod~5e2ad6b4-1c1c-4f1e-8c2a-7b7f0c9e1a11" || doc.Node.Metadata["inbound_port"] != "21000" || doc.Node.Metadata["local_port"] != "8080" {
		t.Fatalf("bootstrap node %+v", doc.Node)
	}

	// A --envoy-bin that is not there is named.
	err = runEnvoy(context.Background(), []string{"--envoy-bin", "/opt/envoy/bin/envoy"}, &stdout, &stderr)
	if !errors.Is(err, errEnvoyMissing) || !strings.Contains(err.Error(), "/opt/envoy/bin/envoy") {
		t.Fatalf("error %v, want the missing --envoy-bin named", err)
	}
	// Through the command line: a non-zero exit and the message.
	stderr.Reset()
	if code := run(context.Background(), []string{"envoy"}, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), "envoy not found") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}

func TestNomadEnvoyExecsEnvoy(t *testing.T) {
	dir := setTaskEnv(t)
	bin := t.TempDir()
	fake := filepath.Join(bin, "envoy")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	var gotBin string
	var gotArgv []string
	saved := execEnvoy
	execEnvoy = func(b string, argv, _ []string) error { gotBin, gotArgv = b, argv; return nil }
	t.Cleanup(func() { execEnvoy = saved })

	var stdout, stderr bytes.Buffer
	if err := runEnvoy(context.Background(), []string{"--", "--log-level", "debug"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "bowline-envoy.json")
	if gotBin != fake || !slices.Equal(gotArgv, []string{"envoy", "-c", path, "--log-level", "debug"}) {
		t.Fatalf("exec %s %v", gotBin, gotArgv)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}

func TestNomadEnvoyDryRun(t *testing.T) {
	dir := setTaskEnv(t)
	var stdout, stderr bytes.Buffer
	if err := runEnvoy(context.Background(), []string{"--dry-run", "--upstream", "api:up_api"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	out := stdout.String()
	for _, want := range []string{`"upstreams": "api:9191"`, `"port_value": 19005`, `"inbound_port": "21000"`, `"address": "10.0.0.1"`} {
		if !strings.Contains(out, want) {
			t.Errorf("bootstrap lacks %s:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "bowline-envoy.json")); !os.IsNotExist(err) {
		t.Fatalf("--dry-run wrote the bootstrap (%v)", err)
	}
}

func nomadEnvFrom(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func nomadEnvWith(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
