package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/codes"

	"github.com/bowlinemesh/bowline/test/consulagent"
	"github.com/bowlinemesh/bowline/test/meshtest"
)

// TestPolicyConsulIntentions: with `consul { intentions = true }`, a deny
// intention written in a real Consul agent denies by traffic (the RBAC of
// greeter's xDS-enabled gRPC server), and removing it allows again.
func TestPolicyConsulIntentions(t *testing.T) {
	agent := consulagent.Start(t)
	c, err := api.NewClient(&api.Config{Address: agent.Address()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "mesh.hcl", policyMeshHCL(lis.Addr().(*net.TCPAddr).Port))
	meshtest.WriteFile(t, dir, "consul.hcl", fmt.Sprintf("consul {\n  address    = %q\n  intentions = true\n}\n", agent.Address()))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})

	_, b := meshtest.BootstrapGRPC(t, srv, "greeter", "--cert-dir", t.TempDir(), "--token", policyGreeterToken)
	meshtest.StartXDSServer(t, "greeter", lis, b)
	frontend := meshtest.DialMTLS(t, srv, "frontend", "greeter", policyFrontendToken)
	backend := meshtest.DialMTLS(t, srv, "backend", "greeter", policyBackendToken)
	names := map[*meshtest.Client]string{frontend: "frontend", backend: "backend"}
	wantCodes(t, 30*time.Second, map[*meshtest.Client]codes.Code{frontend: codes.OK, backend: codes.OK}, names)

	// backend => greeter: deny.
	entry := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "greeter",
		Sources: []*api.SourceIntention{{Name: "backend", Action: api.IntentionActionDeny}}}
	if _, _, err := c.ConfigEntries().Set(entry, nil); err != nil {
		t.Fatal(err)
	}
	took := wantCodes(t, 30*time.Second, map[*meshtest.Client]codes.Code{frontend: codes.OK, backend: codes.PermissionDenied}, names)
	t.Logf("the deny intention took effect within %s", took.Round(10*time.Millisecond))
	var cfg struct {
		Files []struct{ Name string } `json:"files"`
	}
	srv.GetJSON(t, "/v1/config", &cfg)
	found := false
	for _, f := range cfg.Files {
		found = found || strings.HasPrefix(f.Name, "consul-intentions:default/greeter")
	}
	if !found {
		t.Fatalf("/v1/config does not show the intentions' file: %+v", cfg.Files)
	}

	// Removing it allows again.
	if _, err := c.ConfigEntries().Delete(api.ServiceIntentions, "greeter", nil); err != nil {
		t.Fatal(err)
	}
	wantCodes(t, 30*time.Second, map[*meshtest.Client]codes.Code{frontend: codes.OK, backend: codes.OK}, names)
}
