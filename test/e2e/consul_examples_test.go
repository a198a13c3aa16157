package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bowlinemesh/bowline/test/adsclient"
	"github.com/bowlinemesh/bowline/test/consulagent"
	"github.com/bowlinemesh/bowline/test/meshtest"
)

// TestConsulExample follows examples/consul/README.md against a real Consul
// agent: the example's service definitions registered with `consul services
// register`, bowline server on the example's configuration (pointed at the
// test agent), the KV rule file put with `consul kv put`, and an Envoy
// bootstrap from `bowline bootstrap envoy` for web's sidecar.
func TestConsulExample(t *testing.T) {
	example := filepath.Join(meshtest.RepoRoot(t), "examples", "consul")
	agent := consulagent.Start(t)
	consul := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(agent.Binary(), args...)
		cmd.Dir = example
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+agent.URL())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("consul %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	defs, err := filepath.Glob(filepath.Join(example, "services", "*.hcl"))
	if err != nil || len(defs) != 3 {
		t.Fatalf("service definitions: %v (%v)", defs, err)
	}
	for _, def := range defs {
		rel, _ := filepath.Rel(example, def)
		out := consul("services", "register", rel)
		t.Logf("consul services register %s: %s", rel, strings.TrimSpace(out))
	}

	// The example's server configuration, as written, validates; the test runs
	// it with the test agent's address.
	if _, errOut, code := meshtest.Run(t, "validate", filepath.Join(example, "bowline")); code != 0 {
		t.Fatalf("bowline validate examples/consul/bowline: exit %d\n%s", code, errOut)
	}
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "server.hcl", withConsulAddress(t, filepath.Join(example, "bowline", "server.hcl"), agent.Address()))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})

	type upstream struct {
		name string
		port uint32
	}
	want := []struct {
		name, protocol string
		port, sidecar  uint32
		upstreams      []upstream
	}{
		{name: "api", protocol: "http", port: 9090, sidecar: 21001},
		{name: "web", protocol: "http", port: 8080, sidecar: 21000, upstreams: []upstream{{"api", 9191}}},
		{name: "greeter", protocol: "grpc", port: 50051},
	}
	for _, w := range want {
		meshtest.Eventually(t, 30*time.Second, func() error {
			code, body := srv.Get(t, "/v1/services/default/"+w.name)
			if code != http.StatusOK {
				return fmt.Errorf("GET /v1/services/default/%s: %d %s", w.name, code, body)
			}
			var svc consulService
			if err := json.Unmarshal(body, &svc); err != nil {
				return err
			}
			if svc.Protocol != w.protocol || len(svc.Endpoints) != 1 {
				return fmt.Errorf("%s: protocol %s, %d endpoints: %+v", w.name, svc.Protocol, len(svc.Endpoints), svc)
			}
			e := svc.Endpoints[0]
			if e.Port != w.port || e.SidecarPort != w.sidecar || e.Labels["version"] != "v1" || e.Source != "consul" ||
				e.Identity != "spiffe://bowline.local/ns/default/svc/"+w.name {
				return fmt.Errorf("%s: endpoint %+v, want port %d, sidecar port %d, version v1", w.name, e, w.port, w.sidecar)
			}
			var got []upstream
			for _, u := range svc.Upstreams {
				if u.Service.Namespace != "default" {
					return fmt.Errorf("%s: upstream %+v in another namespace", w.name, u)
				}
				got = append(got, upstream{u.Service.Name, u.LocalPort})
			}
			if !slices.Equal(got, w.upstreams) {
				return fmt.Errorf("%s: upstreams %v, want %v", w.name, got, w.upstreams)
			}
			return nil
		})
	}
	var list struct {
		Services []struct {
			Name string `json:"name"`
		} `json:"services"`
	}
	srv.GetJSON(t, "/v1/services", &list)
	for _, s := range list.Services {
		if strings.HasSuffix(s.Name, "-sidecar-proxy") {
			t.Errorf("the sidecar registration %s became a service of its own", s.Name)
		}
	}

	t.Run("the KV rule file is in force", func(t *testing.T) {
		consul("kv", "put", "bowline/config/api.hcl", "@kv/api.hcl")
		meshtest.Eventually(t, 10*time.Second, func() error {
			var cfg configStatus
			srv.GetJSON(t, "/v1/config", &cfg)
			if len(cfg.Rejected) != 0 {
				return fmt.Errorf("rejected: %+v", cfg.Rejected)
			}
			for _, f := range cfg.Files {
				if f.Name == "consul-kv:bowline/config/api.hcl" {
					return nil
				}
			}
			return fmt.Errorf("consul-kv:bowline/config/api.hcl not in force: %+v", cfg.Files)
		})
	})

	t.Run("web's sidecar bootstrap gets its listeners", func(t *testing.T) {
		out, errOut, code := meshtest.Run(t, "bootstrap", "envoy", "--service", "web", "--xds-addr", srv.XDSAddr, "--admin-port", "19000")
		if code != 0 {
			t.Fatalf("bowline bootstrap envoy: exit %d: %s", code, errOut)
		}
		var b bootstrapv3.Bootstrap
		if err := protojson.Unmarshal([]byte(out), &b); err != nil {
			t.Fatalf("bootstrap: %v\n%s", err, out)
		}
		conn, err := grpc.NewClient(srv.XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		envoy := adsclient.New(adsclient.Options{Node: b.GetNode()})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go func() { _ = envoy.Run(ctx, conn) }()
		meshtest.Eventually(t, 10*time.Second, func() error {
			listeners := envoy.Names(resourcev3.ListenerType)
			if !slices.Contains(listeners, "inbound") || !slices.Contains(listeners, "outbound|9191|default/api") {
				return fmt.Errorf("listeners %v, want inbound and outbound|9191|default/api", listeners)
			}
			if !slices.Contains(envoy.Names(resourcev3.ClusterType), "default/api") {
				return fmt.Errorf("clusters %v, want default/api", envoy.Names(resourcev3.ClusterType))
			}
			return nil
		})
		p, err := proxyStatus(t, srv, b.GetNode().GetId())
		if err != nil {
			t.Fatal(err)
		}
		if p.Kind != "envoy" || p.Service != "web" || p.LastNACK != nil {
			t.Fatalf("proxy %+v", p)
		}
	})
}

// withConsulAddress returns a configuration file with its consul block's
// address replaced.
func withConsulAddress(t *testing.T, path, address string) string {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, diags := hclwrite.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("%s: %s", path, diags)
	}
	block := f.Body().FirstMatchingBlock("consul", nil)
	if block == nil || block.Body().GetAttribute("address") == nil || block.Body().GetAttribute("kv_prefix") == nil {
		t.Fatalf("%s: no consul block with address and kv_prefix", path)
	}
	block.Body().SetAttributeValue("address", cty.StringVal(address))
	return string(f.Bytes())
}
