package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bowlinemesh/bowline/policy/telemetry"
	"github.com/bowlinemesh/bowline/policy/telemetry/telemetrytest"
	"github.com/bowlinemesh/bowline/test/meshtest"
)

// policydProc is `bowline policyd` running as a subprocess.
type policydProc struct {
	GRPCAddr, HTTPAddr string
	ConfigDir, Audit   string
	cmd                *exec.Cmd
	log                *bytes.Buffer
	mu                 sync.Mutex
	done               chan struct{}
}

func (p *policydProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.Write(b)
}

func (p *policydProc) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// startPolicyd starts `bowline policyd` on the given addresses (new free
// ports when empty) and waits until it is ready.
func startPolicyd(t *testing.T, dir, grpcAddr, httpAddr, audit string) *policydProc {
	t.Helper()
	if grpcAddr == "" {
		grpcAddr = fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort(t))
		httpAddr = fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort(t))
	}
	p := &policydProc{GRPCAddr: grpcAddr, HTTPAddr: httpAddr, ConfigDir: dir, Audit: audit, log: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(meshtest.Binary(t), "policyd", "--config", dir, "--grpc-addr", grpcAddr, "--http-addr", httpAddr,
		"--audit-log", audit, "--log-level", "debug")
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start bowline policyd: %v", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("bowline policyd log:\n%s", p.Log())
		}
	})
	meshtest.Eventually(t, 60*time.Second, func() error {
		select {
		case <-p.done:
			return fmt.Errorf("bowline policyd exited:\n%s", p.Log())
		default:
		}
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	})
	return p
}

// Stop stops policyd (SIGINT, then kill after 10s) and waits for it.
func (p *policydProc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *policydProc) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + p.HTTPAddr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", path, resp.Status, b)
	}
	return string(b)
}

func (p *policydProc) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// telemetryMesh writes the test mesh's configuration (pointing sidecars at
// this policyd) and builds its simulated sidecars.
func telemetryMesh(t *testing.T) (dir string, mesh *telemetrytest.Mesh) {
	t.Helper()
	dir = t.TempDir()
	meshtest.WriteFile(t, dir, telemetrytest.MeshFile, telemetrytest.MeshHCL)
	mesh, err := telemetrytest.NewMesh(telemetrytest.MeshHCL)
	if err != nil {
		t.Fatal(err)
	}
	for name, sc := range mesh.Sidecars {
		if !sc.Logs() {
			t.Fatalf("the generated configuration of %s has no access log", name)
		}
	}
	return dir, mesh
}

// sendChain sends one round of traffic and waits until policyd has it.
func sendChain(t *testing.T, conn *grpc.ClientConn, mesh *telemetrytest.Mesh, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mesh.SendChain(ctx, conn, n); err != nil {
		t.Fatal(err)
	}
	if err := mesh.Close(); err != nil {
		t.Fatal(err)
	}
}

// sample returns the value of the first sample of a metric with all the
// labels given.
func sample(text, name string, labels map[string]string) (string, bool) {
	for line := range strings.SplitSeq(text, "\n") {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		end := strings.LastIndex(rest, "} ")
		all := end > 0
		for k, v := range labels {
			all = all && strings.Contains(rest[:end], fmt.Sprintf("%s=%q", k, v))
		}
		if all {
			return rest[end+2:], true
		}
	}
	return "", false
}

// TestTelemetryThroughPolicyd streams access logs to `bowline policyd` as
// the sidecars of frontend → orders → payments would, and reads the
// metrics, the service graph and the audit log back.
func TestTelemetryThroughPolicyd(t *testing.T) {
	dir, mesh := telemetryMesh(t)
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	p := startPolicyd(t, dir, "", "", audit)
	conn := p.dial(t)
	const n = 100
	tr := telemetrytest.ChainTraffic(n)
	sendChain(t, conn, mesh, n)

	metrics := p.get(t, "/metrics")
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   string
	}{
		{"istio_requests_total", map[string]string{"reporter": "destination", "source_workload": "frontend", "destination_workload": "orders",
			"destination_version": "v2", "connection_security_policy": "mutual_tls", "response_code": "503", "tenant": "globex"}, fmt.Sprint(tr.FrontendOrdersErrors)},
		{"istio_requests_total", map[string]string{"reporter": "source", "source_workload": "frontend", "source_version": "v1",
			"destination_service_name": "orders", "response_code": "200", "tenant": "acme"}, fmt.Sprint(tr.FrontendOrders / 2)},
		{"istio_requests_total", map[string]string{"reporter": "source", "source_workload": "orders", "destination_service_name": "payments",
			"request_protocol": "grpc", "grpc_response_status": "14"}, fmt.Sprint(tr.OrdersPaymentsErrors)},
		{"istio_request_duration_milliseconds_count", map[string]string{"reporter": "destination", "source_workload": "batch",
			"destination_workload": "payments"}, fmt.Sprint(tr.BatchDenied)},
	} {
		if got, ok := sample(metrics, c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %q (found %v), want %s", c.name, c.labels, got, ok, c.want)
		}
	}

	var g telemetry.GraphView
	if err := json.Unmarshal([]byte(p.get(t, "/v1/graph?window=5m")), &g); err != nil {
		t.Fatal(err)
	}
	edges := map[string]telemetry.GraphEdge{}
	for _, e := range g.Edges {
		edges[e.Source+" -> "+e.Destination] = e
	}
	for key, want := range map[string][2]int{
		"default/frontend -> default/orders": {tr.FrontendOrders, tr.FrontendOrdersErrors},
		"default/orders -> default/payments": {tr.OrdersPayments + tr.DryRun, tr.OrdersPaymentsErrors},
		"default/batch -> default/payments":  {tr.BatchDenied, tr.BatchDenied},
	} {
		e := edges[key]
		ratio := float64(want[1]) / float64(want[0])
		if e.Requests != uint64(want[0]) || e.Errors != uint64(want[1]) || abs(e.ErrorRatio-ratio) > 1e-3 ||
			abs(e.Rate-float64(want[0])/g.WindowSeconds) > 1e-3 || e.MTLS != 1 {
			t.Errorf("edge %s = %+v; want %d requests, %d errors (ratio %.4f, rate %.3f)", key, e, want[0], want[1], ratio, float64(want[0])/g.WindowSeconds)
		}
	}

	// policyd's own ext_authz decision: batch may not call payments.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Principal: telemetrytest.Principal("batch")},
		Destination: &authv3.AttributeContext_Peer{Principal: telemetrytest.Principal("payments")},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "POST", Path: "/payments.Payments/Charge", Host: "payments", Headers: map[string]string{"content-type": "application/grpc"}}},
		ContextExtensions: map[string]string{"destination": "default/payments"},
	}})
	if err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.PermissionDenied {
		t.Fatalf("Check: %v %v", resp.GetStatus(), err)
	}

	// The audit log: the sidecar's RBAC denials and dry-run denials, and
	// policyd's denial, each with its rule's file:line.
	file := filepath.Join(dir, telemetrytest.MeshFile)
	want := map[string]int{
		"proxy deny " + telemetrytest.DenyBatchRule + " " + file + ":20":        tr.BatchDenied,
		"proxy dry_run_deny " + telemetrytest.DryRunRefund + " " + file + ":24": tr.DryRun,
		"policyd deny " + telemetrytest.DenyBatchRule + " " + file + ":20":      1,
	}
	var got map[string]int
	meshtest.Eventually(t, 10*time.Second, func() error {
		b, err := os.ReadFile(audit)
		if err != nil {
			return err
		}
		got = map[string]int{}
		for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
			var r telemetry.AuditRecord
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				return fmt.Errorf("audit line %q: %v", line, err)
			}
			if r.SourcePrincipal == "" || r.Destination != "default/payments" || r.Method != "POST" || r.Path == "" || r.Time.IsZero() {
				return fmt.Errorf("audit record %+v", r)
			}
			got[r.Origin+" "+r.Decision+" "+r.Rule+" "+r.RuleAt]++
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("audit records %v, want %v", got, want)
		}
		return nil
	})
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}
