package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3" // resolves the bootstrap's typed options
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bowlinemesh/bowline/test/meshtest"
	"github.com/bowlinemesh/bowline/xds/bootstrap"
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
	srv := startCheckedServer(t, dir)

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
		pushes := metricSum(t, srv, "bowline_xds_pushes_total")
		latencyCount := metricSum(t, srv, "bowline_xds_push_latency_seconds_count")
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
		// The change was pushed, and its ACK observed in the latency histogram.
		meshtest.Eventually(t, 5*time.Second, func() error {
			if got := metricSum(t, srv, "bowline_xds_pushes_total"); got <= pushes {
				return fmt.Errorf("bowline_xds_pushes_total = %v, was %v before the change", got, pushes)
			}
			if got := metricSum(t, srv, "bowline_xds_push_latency_seconds_count"); got <= latencyCount {
				return fmt.Errorf("bowline_xds_push_latency_seconds_count = %v, was %v before the change", got, latencyCount)
			}
			return nil
		})
		assertConsistent(t, srv, c.NodeID)
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
		assertConsistent(t, srv, c.NodeID)
	})
	assertConsistent(t, srv, "")
}

// startCheckedServer starts bowline server on dir with --check: every proxy
// configuration passes translate.Check (ValidateAll and references) before
// it is served, and a failure shows as a build error (assertConsistent).
func startCheckedServer(t *testing.T, dir string) *meshtest.Server {
	t.Helper()
	return meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})
}

// metricSum sums the samples of one metric in /metrics (every label set);
// it fails the test when the metric is absent.
func metricSum(t *testing.T, srv *meshtest.Server, name string) float64 {
	t.Helper()
	code, body := srv.Get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	sum, found := 0.0, false
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if metric, _, _ := strings.Cut(series, "{"); metric != name {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			t.Fatalf("/metrics: %q: %v", line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		t.Fatalf("/metrics lacks %s", name)
	}
	return sum
}

// assertConsistent checks what --check reports: no translation failed
// (bowline_xds_build_errors_total is 0) and no connected proxy has a build
// error. When mustList is set, that proxy must be in /v1/proxies, so the
// check is not vacuous.
func assertConsistent(t *testing.T, srv *meshtest.Server, mustList string) {
	t.Helper()
	if got := metricSum(t, srv, "bowline_xds_build_errors_total"); got != 0 {
		t.Errorf("bowline_xds_build_errors_total = %v, want 0: a configuration failed the consistency check", got)
	}
	var resp struct {
		Proxies []server.ProxyStatus `json:"proxies"`
	}
	srv.GetJSON(t, "/v1/proxies", &resp)
	listed := mustList == ""
	for _, p := range resp.Proxies {
		if p.BuildError != "" {
			t.Errorf("proxy %s has a build error: %s", p.ID, p.BuildError)
		}
		listed = listed || p.ID == mustList
	}
	if !listed {
		t.Errorf("proxy %s not in /v1/proxies: %+v", mustList, resp.Proxies)
	}
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
	srv := startCheckedServer(t, dir)
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
	// The NACKed configuration passed the server's own check: the client,
	// not the server, rejected it.
	assertConsistent(t, srv, c.NodeID)
}

func TestRejectedFileKeepsServing(t *testing.T) {
	ctx := t.Context()
	b1 := meshtest.StartBackend(t, "b1")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "greeter.hcl", greeterHCL(b1))
	srv := startCheckedServer(t, dir)
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
	assertConsistent(t, srv, c.NodeID)
}

func TestBootstrapEnvoyIsValid(t *testing.T) {
	for _, tc := range []struct {
		name, namespace string
		args            []string
	}{
		{name: "default namespace", namespace: "default"},
		{name: "namespace flag", namespace: "shop", args: []string{"--namespace", "shop"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"bootstrap", "envoy", "--service", "web", "--xds-addr", "127.0.0.1:15010", "--admin-port", "19001", "--upstream", "greeter:9191"}, tc.args...)
			out, errOut, code := meshtest.Run(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var b bootstrapv3.Bootstrap
			if err := protojson.Unmarshal([]byte(out), &b); err != nil {
				t.Fatalf("the output is not an Envoy Bootstrap: %v\n%s", err, out)
			}
			if err := b.ValidateAll(); err != nil {
				t.Fatalf("ValidateAll: %v\n%s", err, out)
			}
			// Node: the default id is <service>.<namespace>~<host>~<random>.
			if id := b.GetNode().GetId(); !strings.HasPrefix(id, "web."+tc.namespace+"~") || strings.Count(id, "~") != 2 {
				t.Errorf("node.id = %q, want web.%s~<host>~<random>", id, tc.namespace)
			}
			if got := b.GetNode().GetCluster(); got != "web" {
				t.Errorf("node.cluster = %q, want web", got)
			}
			md := b.GetNode().GetMetadata().GetFields()
			for k, want := range map[string]string{server.MetaKind: "envoy", server.MetaService: "web", server.MetaNamespace: tc.namespace, server.MetaUpstreams: "greeter:9191"} {
				if got := md[k].GetStringValue(); got != want {
					t.Errorf("node.metadata.%s = %q, want %q", k, got, want)
				}
			}
			if got := b.GetAdmin().GetAddress().GetSocketAddress(); got.GetAddress() != "127.0.0.1" || got.GetPortValue() != 19001 {
				t.Errorf("admin address = %v, want 127.0.0.1:19001", got)
			}
			// ADS goes to the static xDS cluster, which points at --xds-addr.
			ads := b.GetDynamicResources().GetAdsConfig()
			if len(ads.GetGrpcServices()) != 1 || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != bootstrap.XDSCluster {
				t.Fatalf("ads_config = %v, want one envoy_grpc service on cluster %s", ads, bootstrap.XDSCluster)
			}
			if b.GetDynamicResources().GetCdsConfig().GetAds() == nil || b.GetDynamicResources().GetLdsConfig().GetAds() == nil {
				t.Errorf("CDS and LDS must come over ADS: %v", b.GetDynamicResources())
			}
			var addrs []string
			for _, c := range b.GetStaticResources().GetClusters() {
				if c.GetName() != bootstrap.XDSCluster {
					continue
				}
				for _, l := range c.GetLoadAssignment().GetEndpoints() {
					for _, e := range l.GetLbEndpoints() {
						sa := e.GetEndpoint().GetAddress().GetSocketAddress()
						addrs = append(addrs, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
					}
				}
			}
			if strings.Join(addrs, ",") != "127.0.0.1:15010" {
				t.Errorf("xDS cluster %s endpoints = %v, want 127.0.0.1:15010", bootstrap.XDSCluster, addrs)
			}
		})
	}
	if _, _, code := meshtest.Run(t, "bootstrap", "envoy", "--xds-addr", "127.0.0.1:15010"); code == 0 {
		t.Fatal("a bootstrap without --service must fail")
	}
}

// grpcNamespaceMesh serves greeter in two namespaces: default's greeter is
// backend "default-greeter", shop's is "shop-greeter".
func grpcNamespaceMesh(t *testing.T) *meshtest.Server {
	t.Helper()
	inDefault, inShop := meshtest.StartBackend(t, "default-greeter"), meshtest.StartBackend(t, "shop-greeter")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "greeter.hcl", greeterHCL(inDefault)+fmt.Sprintf(`
service "greeter" {
  namespace = "shop"
  protocol  = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = %d
  }
}
`, inShop.Port))
	return startCheckedServer(t, dir)
}

// grpcBootstrapDoc is the part of a gRPC xDS bootstrap the tests read.
type grpcBootstrapDoc struct {
	XDSServers []struct {
		ServerURI string `json:"server_uri"`
	} `json:"xds_servers"`
	Node struct {
		ID       string         `json:"id"`
		Cluster  string         `json:"cluster"`
		Metadata map[string]any `json:"metadata"`
	} `json:"node"`
}

// grpcBootstrap runs `bowline bootstrap grpc` with args (no --node-id: the
// default id is under test) and returns the JSON and its decoded node.
func grpcBootstrap(t *testing.T, args ...string) ([]byte, grpcBootstrapDoc) {
	t.Helper()
	out, errOut, code := meshtest.Run(t, append([]string{"bootstrap", "grpc"}, args...)...)
	if code != 0 {
		t.Fatalf("bowline bootstrap grpc: exit %d: %s", code, errOut)
	}
	var doc grpcBootstrapDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("bootstrap is not JSON: %v\n%s", err, out)
	}
	return []byte(out), doc
}

// dialWithBootstrap dials xds:///target through gRPC-Go's xDS resolver
// configured by bootstrap (gRPC-Go must accept it). gRPC-Go keeps an xDS
// client per channel target, so channels to different targets open separate
// ADS streams with the same node id.
func dialWithBootstrap(t *testing.T, builder resolver.Builder, nodeID, target string) *meshtest.Client {
	t.Helper()
	conn, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(builder), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial xds:///%s: %v", target, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &meshtest.Client{NodeID: nodeID, Conn: conn, Stub: testgrpc.NewTestServiceClient(conn)}
}

func xdsResolver(t *testing.T, bootstrap []byte) resolver.Builder {
	t.Helper()
	builder, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatalf("gRPC-Go rejects the bootstrap: %v\n%s", err, bootstrap)
	}
	return builder
}

// allOn succeeds when 20 calls in a row reach the backend want.
func allOn(ctx context.Context, c *meshtest.Client, want string) func() error {
	return func() error {
		spread := c.Spread(ctx, 20)
		if spread[want] != 20 {
			_, err := c.Call(ctx)
			return fmt.Errorf("want every call on %s, got %v (last error: %v)", want, spread, err)
		}
		return nil
	}
}

// `bowline bootstrap grpc --namespace NS` puts the client in NS: its node
// metadata and default node id name NS, the server lists it there, and a bare
// xds:///greeter resolves to NS's greeter, not default's.
func TestBootstrapGRPCNamespace(t *testing.T) {
	ctx := t.Context()
	srv := grpcNamespaceMesh(t)

	ids := map[string]bool{}
	for _, target := range []string{"greeter.shop", "greeter"} {
		bs, doc := grpcBootstrap(t, "--service", "client", "--namespace", "shop", "--xds-addr", srv.XDSAddr)
		if len(doc.XDSServers) != 1 || doc.XDSServers[0].ServerURI != srv.XDSAddr {
			t.Errorf("xds_servers = %+v, want %s", doc.XDSServers, srv.XDSAddr)
		}
		if !strings.HasPrefix(doc.Node.ID, "client.shop~") || strings.Count(doc.Node.ID, "~") != 2 {
			t.Errorf("node.id = %q, want client.shop~<host>~<random>", doc.Node.ID)
		}
		if ids[doc.Node.ID] {
			t.Errorf("two bootstraps got the same default node id %q", doc.Node.ID)
		}
		ids[doc.Node.ID] = true
		if doc.Node.Cluster != "client" || doc.Node.Metadata[server.MetaNamespace] != "shop" ||
			doc.Node.Metadata[server.MetaService] != "client" || doc.Node.Metadata[server.MetaKind] != "grpc" {
			t.Errorf("node = %+v, want cluster client and metadata kind grpc, service client, namespace shop", doc.Node)
		}

		c := dialWithBootstrap(t, xdsResolver(t, bs), doc.Node.ID, target)
		start := time.Now()
		meshtest.Eventually(t, 30*time.Second, allOn(ctx, c, "shop-greeter"))
		t.Logf("xds:///%s from namespace shop reached shop's greeter after %s", target, time.Since(start).Round(time.Millisecond))

		p, err := proxyStatus(t, srv, doc.Node.ID)
		if err != nil {
			t.Fatal(err)
		}
		if p.Kind != "grpc" || p.Service != "client" || p.Namespace != "shop" {
			t.Fatalf("/v1/proxies record %+v, want a grpc proxy of service client in namespace shop", p)
		}
	}

	// The same bare name from a client in the default namespace reaches
	// default's greeter: the difference is the namespace.
	bs, doc := grpcBootstrap(t, "--service", "client", "--xds-addr", srv.XDSAddr)
	if !strings.HasPrefix(doc.Node.ID, "client.default~") || doc.Node.Metadata[server.MetaNamespace] != "default" {
		t.Errorf("without --namespace: node %+v, want namespace default", doc.Node)
	}
	c := dialWithBootstrap(t, xdsResolver(t, bs), doc.Node.ID, "greeter")
	meshtest.Eventually(t, 30*time.Second, allOn(ctx, c, "default-greeter"))
	assertConsistent(t, srv, doc.Node.ID)
}

// One gRPC process, one bootstrap, two targets. gRPC-Go keeps an xDS client
// per channel target, so the process opens two ADS streams with one node id,
// each naming only its own listener. The server builds the proxy for the
// union of its streams' listeners; when it took the latest stream's names as
// the proxy's, the other stream's listener was answered as removed
// ("resource \"greeter\" of type ListenerResource has been removed") in
// about one run in four, and that channel never recovered.
func TestGRPCClientDialsTwoTargetsOnOneBootstrap(t *testing.T) {
	ctx := t.Context()
	srv := grpcNamespaceMesh(t)
	bs, doc := grpcBootstrap(t, "--service", "client", "--namespace", "shop", "--xds-addr", srv.XDSAddr)
	builder := xdsResolver(t, bs)
	for _, target := range []string{"greeter.shop", "greeter"} {
		meshtest.Eventually(t, 30*time.Second, allOn(ctx, dialWithBootstrap(t, builder, doc.Node.ID, target), "shop-greeter"))
	}
	assertConsistent(t, srv, doc.Node.ID)
}
