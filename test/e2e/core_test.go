package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/test/meshtest"
	"github.com/bowlinemesh/bowline/xds/server"
)

// greeterHCL declares greeter with one endpoint per backend, in the form the
// issue fixes.
func greeterHCL(backends ...*meshtest.Backend) string {
	var b strings.Builder
	b.WriteString("service \"greeter\" {\n  namespace = \"default\"\n  protocol  = \"grpc\"\n")
	for i, be := range backends {
		fmt.Fprintf(&b, "  endpoint {\n    address = \"127.0.0.1\"\n    port    = %d\n    labels  = { version = \"v%d\" }\n  }\n", be.Port, i+1)
	}
	b.WriteString("}\n")
	return b.String()
}

func TestTrafficFollowsTheFileRegistry(t *testing.T) {
	ctx := t.Context()
	b1, b2, b3 := meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2"), meshtest.StartBackend(t, "b3")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "greeter.hcl", greeterHCL(b1, b2, b3))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir})

	for _, target := range []string{"greeter", "greeter.default"} {
		t.Run("every endpoint gets traffic via xds:///"+target, func(t *testing.T) {
			c := meshtest.Dial(t, srv, "client", target)
			meshtest.Eventually(t, 20*time.Second, func() error {
				_, err := c.Call(ctx)
				return err
			})
			spread := c.Spread(ctx, 300)
			for _, id := range []string{"b1", "b2", "b3"} {
				if spread[id] == 0 {
					t.Errorf("backend %s got no traffic: %v", id, spread)
				}
			}
			if spread["error"] > 0 {
				t.Errorf("%d RPCs failed: %v", spread["error"], spread)
			}
		})
	}

	t.Run("removing an endpoint from the file stops traffic to it", func(t *testing.T) {
		c := meshtest.Dial(t, srv, "client", "greeter")
		meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })
		start := time.Now()
		meshtest.WriteFile(t, dir, "greeter.hcl", greeterHCL(b1, b2))
		before := b3.Calls.Load()
		meshtest.Eventually(t, 2*time.Second, func() error {
			// Traffic has moved once 30 calls in a row avoid b3.
			for range 30 {
				id, err := c.Call(ctx)
				if err != nil {
					return err
				}
				if id == "b3" {
					return fmt.Errorf("b3 still receives traffic")
				}
			}
			return nil
		})
		t.Logf("traffic left the removed endpoint %s after the file was written (b3 served %d calls meanwhile)", time.Since(start).Round(time.Millisecond), b3.Calls.Load()-before)
		stable := b3.Calls.Load()
		spread := c.Spread(ctx, 100)
		if b3.Calls.Load() != stable || spread["b1"] == 0 || spread["b2"] == 0 {
			t.Fatalf("after removal, want traffic on b1 and b2 only: %v (b3 calls %d -> %d)", spread, stable, b3.Calls.Load())
		}
	})

	t.Run("the client shows in /v1/proxies with its ACKed versions", func(t *testing.T) {
		c := meshtest.Dial(t, srv, "client", "greeter")
		meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })
		meshtest.Eventually(t, 5*time.Second, func() error {
			p, err := proxyStatus(t, srv, c.NodeID)
			if err != nil {
				return err
			}
			if p.Kind != "grpc" || p.Service != "client" || p.Namespace != "default" || p.ConnectedSince.IsZero() {
				return fmt.Errorf("unexpected proxy record %+v", p)
			}
			for _, typ := range []string{"listeners", "routes", "clusters", "endpoints"} {
				if p.Acked[typ] == "" || p.Acked[typ] != p.Sent[typ] {
					return fmt.Errorf("%s: sent %q, acked %q", typ, p.Sent[typ], p.Acked[typ])
				}
			}
			if p.LastNACK != nil {
				return fmt.Errorf("unexpected NACK: %+v", p.LastNACK)
			}
			return nil
		})
		// The CLI reads the same record.
		out, errOut, code := meshtest.Run(t, "status", "--admin-addr", srv.AdminAddr)
		if code != 0 || !strings.Contains(out, c.NodeID) || !strings.Contains(out, "SYNCED") {
			t.Fatalf("bowline status: exit %d\n%s%s", code, out, errOut)
		}
		out, errOut, code = meshtest.Run(t, "config-dump", "--admin-addr", srv.AdminAddr, c.NodeID)
		if code != 0 || !strings.Contains(out, `"name": "greeter"`) || !strings.Contains(out, `"cluster_name": "default/greeter"`) {
			t.Fatalf("bowline config-dump: exit %d\n%s%s", code, out, errOut)
		}
	})
}

func proxyStatus(t *testing.T, srv *meshtest.Server, id string) (server.ProxyStatus, error) {
	var resp struct {
		Proxies []server.ProxyStatus `json:"proxies"`
	}
	srv.GetJSON(t, "/v1/proxies", &resp)
	for _, p := range resp.Proxies {
		if p.ID == id {
			return p, nil
		}
	}
	return server.ProxyStatus{}, fmt.Errorf("proxy %s not in /v1/proxies", id)
}

// A configuration Envoy accepts but gRPC-Go rejects: an endpoint's sidecar
// port equal to another endpoint's port gives the client two endpoints with
// the same address, which gRPC-Go NACKs. The NACK and its error text show in
// /v1/proxies, and the client keeps its last accepted endpoints.
func TestNACKIsReported(t *testing.T) {
	ctx := t.Context()
	b1, b2 := meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "greeter.hcl", greeterHCL(b1, b2))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir})
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })

	meshtest.WriteFile(t, dir, "greeter.hcl", fmt.Sprintf(`
service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = %d
  }
  endpoint {
    address      = "127.0.0.1"
    port         = %d
    sidecar_port = %d
  }
}
`, b1.Port, b2.Port, b1.Port))
	meshtest.Eventually(t, 5*time.Second, func() error {
		p, err := proxyStatus(t, srv, c.NodeID)
		if err != nil {
			return err
		}
		if p.LastNACK == nil {
			return fmt.Errorf("no NACK recorded yet")
		}
		if p.LastNACK.Type != "endpoints" || !strings.Contains(p.LastNACK.Error, "duplicate endpoint") {
			return fmt.Errorf("unexpected NACK %+v", p.LastNACK)
		}
		if p.Acked["endpoints"] == p.Sent["endpoints"] {
			return fmt.Errorf("endpoints version %s shown as ACKed although it was rejected", p.Sent["endpoints"])
		}
		return nil
	})
	spread := c.Spread(ctx, 50)
	if spread["b1"] == 0 || spread["b2"] == 0 {
		t.Fatalf("the client should keep its last accepted endpoints: %v", spread)
	}
	var metrics string
	_, body := srv.Get(t, "/metrics")
	metrics = string(body)
	if !strings.Contains(metrics, `bowline_xds_nacks_total{type="endpoints"}`) {
		t.Fatalf("/metrics lacks the NACK counter:\n%s", metrics)
	}
}

func TestRejectedFileKeepsServing(t *testing.T) {
	ctx := t.Context()
	b1 := meshtest.StartBackend(t, "b1")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "greeter.hcl", greeterHCL(b1))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir})
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })

	broken := "service \"greeter\" {\n  protocol = \"grpc\"\n  endpoint {\n    address = \"127.0.0.1\"\n    port    = 70000\n  }\n}\n"
	meshtest.WriteFile(t, dir, "greeter.hcl", broken)
	var cfg struct {
		Rejected []struct {
			Name        string `json:"name"`
			Diagnostics []struct {
				Position string `json:"position"`
				Source   string `json:"source"`
				Summary  string `json:"summary"`
			} `json:"diagnostics"`
		} `json:"rejected"`
	}
	meshtest.Eventually(t, 5*time.Second, func() error {
		srv.GetJSON(t, "/v1/config", &cfg)
		if len(cfg.Rejected) != 1 {
			return fmt.Errorf("want one rejected file, got %+v", cfg.Rejected)
		}
		return nil
	})
	d := cfg.Rejected[0].Diagnostics[0]
	want := filepath.Join(dir, "greeter.hcl") + ":5:"
	if !strings.HasPrefix(d.Position, want) || !strings.Contains(d.Source, "70000") || d.Summary != "Invalid port" {
		t.Fatalf("diagnostic %+v, want position %s..., the offending line and 'Invalid port'", d, want)
	}
	if spread := c.Spread(ctx, 20); spread["b1"] != 20 {
		t.Fatalf("the last valid configuration must keep serving: %v", spread)
	}

	// bowline validate reports the same problem with file and line.
	_, errOut, code := meshtest.Run(t, "validate", dir)
	if code != 1 || !strings.Contains(errOut, want) || !strings.Contains(errOut, "port    = 70000") {
		t.Fatalf("bowline validate: exit %d, stderr:\n%s", code, errOut)
	}
}

func TestBootstrapEnvoyIsValid(t *testing.T) {
	out, errOut, code := meshtest.Run(t, "bootstrap", "envoy", "--service", "web", "--xds-addr", "127.0.0.1:15010", "--admin-port", "19001", "--upstream", "greeter:9191")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, `"upstreams": "greeter:9191"`) || !strings.Contains(out, `"port_value": 19001`) {
		t.Fatalf("bootstrap lacks the upstream or admin port:\n%s", out)
	}
	_, _, code = meshtest.Run(t, "bootstrap", "envoy", "--xds-addr", "127.0.0.1:15010")
	if code == 0 {
		t.Fatal("a bootstrap without --service must fail")
	}
	_ = os.Getenv
	_ = context.Background
}
