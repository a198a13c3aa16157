package policyd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

const (
	td        = "mesh.test"
	frontend  = "spiffe://mesh.test/ns/default/svc/frontend"
	backend   = "spiffe://mesh.test/ns/default/svc/backend"
	ordersID  = "spiffe://mesh.test/ns/default/svc/orders"
	servicesH = `
mesh {
  trust_domain = "mesh.test"
}
service "orders" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
}
service "frontend" {
  protocol = "http"
}
service "backend" {
  protocol = "http"
}
`
	issueRule = `
authorization "orders" {
  namespace = "default"
  rule {
    action = "allow"
    from { services = ["frontend"] }
    to { methods = ["GET"]  paths = ["/api/*"] }
  }
  rule {
    action = "deny"
    mode   = "dry-run"
    from { services = ["frontend"] }
    to { paths = ["/api/secret*"] }
  }
}
`
)

func checkReq(dest, src, method, path string, port uint32) *authv3.CheckRequest {
	ext := map[string]string{}
	if dest != "" {
		ext[ExtDestination] = dest
	}
	if port != 0 {
		ext[ExtPort] = fmt.Sprint(port)
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Principal: src},
		Destination: &authv3.AttributeContext_Peer{Principal: ordersID, Address: sockAddr(21000)},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: "orders", Headers: map[string]string{":method": method, ":path": path, ":authority": "orders"},
		}},
		ContextExtensions: ext,
	}}
}

func sockAddr(port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func configOf(t testing.TB, src string) (*config.Config, *discovery.Snapshot) {
	t.Helper()
	cfg, diags := config.Parse([]config.File{{Name: "orders.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	return cfg, discovery.NewSnapshot(nil, file.Convert(cfg))
}

func TestCheck(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := NewAuthz(slog.New(slog.DiscardHandler), reg)
	ctx := t.Context()

	// Before any rules: everything is denied.
	resp, _ := a.Check(ctx, checkReq("default/orders", frontend, "GET", "/api/x", 8080))
	if codes.Code(resp.GetStatus().GetCode()) != codes.PermissionDenied {
		t.Fatal("allowed before rules were loaded")
	}

	a.Update(configOf(t, servicesH+issueRule))
	for _, c := range []struct {
		name  string
		req   *authv3.CheckRequest
		allow bool
	}{
		{"frontend GET /api", checkReq("default/orders", frontend, "GET", "/api/orders?x=1", 8080), true},
		{"frontend POST", checkReq("default/orders", frontend, "POST", "/api/orders", 8080), false},
		{"backend", checkReq("default/orders", backend, "GET", "/api/orders", 8080), false},
		{"plaintext", checkReq("default/orders", "", "GET", "/api/orders", 8080), false},
		{"destination from the destination principal", checkReq("", frontend, "GET", "/api/x", 0), true},
		{"a destination without rules", checkReq("default/backend", backend, "DELETE", "/", 0), true},
		{"no destination at all", func() *authv3.CheckRequest {
			r := checkReq("", frontend, "GET", "/api/x", 0)
			r.Attributes.Destination.Principal = ""
			return r
		}(), false},
	} {
		resp, err := a.Check(ctx, c.req)
		if err != nil {
			t.Fatal(err)
		}
		got := codes.Code(resp.GetStatus().GetCode())
		if (got == codes.OK) != c.allow {
			t.Errorf("%s: status %v, want allow=%v", c.name, got, c.allow)
		}
		if !c.allow {
			dr := resp.GetDeniedResponse()
			if got != codes.PermissionDenied || dr.GetStatus().GetCode() != typev3.StatusCode_Forbidden || dr.GetBody() != DenyBody {
				t.Errorf("%s: denial = %v %v %q", c.name, got, dr.GetStatus().GetCode(), dr.GetBody())
			}
		}
	}
	if v := testutil.ToFloat64(a.decisions.WithLabelValues("allow", "default/orders/0")); v != 2 {
		t.Errorf("allow decisions by rule 0 = %v", v)
	}
	if v := testutil.ToFloat64(a.decisions.WithLabelValues("deny", "default")); v != 3 {
		t.Errorf("deny decisions by default = %v", v)
	}
	if v := testutil.ToFloat64(a.decisions.WithLabelValues("deny", "unknown")); v != 2 {
		t.Errorf("deny decisions for unknown destinations = %v", v)
	}
	// The dry-run deny rule would have denied /api/secret: recorded, not enforced.
	resp, _ = a.Check(ctx, checkReq("default/orders", frontend, "GET", "/api/secret/1", 8080))
	if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		t.Fatal("a dry-run rule decided")
	}
	if v := testutil.ToFloat64(a.dryRuns.WithLabelValues("deny", "default/orders/1")); v != 1 {
		t.Errorf("dry-run denials by rule 1 = %v", v)
	}
	if n := testutil.CollectAndCount(a.latency); n != 1 {
		t.Errorf("latency histogram: %d series", n)
	}
}

func TestPorts(t *testing.T) {
	a := NewAuthz(slog.New(slog.DiscardHandler), nil)
	a.Update(configOf(t, servicesH+`
authorization "orders" {
  rule {
    action = "allow"
    to { ports = [8080] }
  }
}
`))
	ctx := t.Context()
	// With the port extension; without it the sidecar's port (21000) maps
	// to the application's (8080) through the catalog.
	for _, c := range []struct {
		name  string
		req   *authv3.CheckRequest
		allow bool
	}{
		{"port extension", checkReq("default/orders", frontend, "GET", "/", 8080), true},
		{"another port", checkReq("default/orders", frontend, "GET", "/", 9090), false},
		{"the sidecar's port, mapped", checkReq("default/orders", frontend, "GET", "/", 0), true},
	} {
		resp, _ := a.Check(ctx, c.req)
		if (codes.Code(resp.GetStatus().GetCode()) == codes.OK) != c.allow {
			t.Errorf("%s: %v", c.name, resp.GetStatus())
		}
	}
}

// TestDaemon runs policyd on a configuration directory: it decides over
// gRPC, follows edits, keeps deciding with the last valid rules when a file
// is rejected, and serves its HTTP endpoints.
func TestDaemon(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	write("services.hcl", servicesH)
	write("orders.hcl", issueRule)
	d, err := New(Options{ConfigDir: dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Sources: func(_ *config.Config, store *config.Store, _ *slog.Logger) ([]discovery.Source, []config.FileSource, error) {
			return []discovery.Source{file.New(store)}, nil, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	conn, err := grpc.NewClient(d.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	decide := func(src string) codes.Code {
		resp, err := client.Check(ctx, checkReq("default/orders", src, "GET", "/api/orders", 8080))
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.GetStatus().GetCode())
	}
	eventually(t, func() error {
		if c := decide(frontend); c != codes.OK {
			return fmt.Errorf("frontend: %v", c)
		}
		return nil
	})
	if c := decide(backend); c != codes.PermissionDenied {
		t.Fatalf("backend: %v", c)
	}

	// An edit flips the decision.
	write("orders.hcl", strings.ReplaceAll(issueRule, `services = ["frontend"] }
    to { methods`, `services = ["backend"] }
    to { methods`))
	eventually(t, func() error {
		if c := decide(backend); c != codes.OK {
			return fmt.Errorf("backend after the edit: %v", c)
		}
		return nil
	})
	// A rejected file flips nothing.
	write("orders.hcl", strings.ReplaceAll(issueRule, `"/api/*"`, `"api/*"`))
	var rules Rules
	eventually(t, func() error {
		getJSON(t, "http://"+d.HTTPAddr()+"/v1/rules", &rules)
		if len(rules.Rejected) != 1 {
			return fmt.Errorf("rejected = %+v", rules.Rejected)
		}
		return nil
	})
	if c := decide(backend); c != codes.OK {
		t.Fatalf("a rejected file changed the decision: %v", c)
	}
	if rej := rules.Rejected[0]; !strings.HasSuffix(rej.Name, "orders.hcl") || rej.Diagnostics[0].Position == "" {
		t.Fatalf("rejection = %+v", rej)
	}
	if len(rules.Destinations) != 1 || rules.Destinations[0].Service != "default/orders" {
		t.Fatalf("destinations = %+v", rules.Destinations)
	}
	r0 := rules.Destinations[0].Rules[0]
	if !strings.HasSuffix(r0.Position, "orders.hcl:4") || r0.Action != "allow" || r0.ID != "default/orders/0" {
		t.Fatalf("rule = %+v", r0)
	}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/nope": 404} {
		resp, err := http.Get("http://" + d.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	resp, err := http.Get("http://" + d.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`bowline_policyd_decisions_total{result="allow",rule="default/orders/0"}`, "bowline_policyd_check_duration_seconds_bucket", "bowline_config_rejected_files 1"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
