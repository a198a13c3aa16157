package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/test/meshtest"
)

const (
	policyGreeterToken  = "policy-greeter-token-0123456789"
	policyFrontendToken = "policy-frontend-token-0123456789"
	policyBackendToken  = "policy-backend-token-0123456789"
	policyFrontendID    = "spiffe://mesh.test/ns/default/svc/frontend"
	policyBackendID     = "spiffe://mesh.test/ns/default/svc/backend"
)

// policyMeshHCL is a strict-mTLS mesh where greeter is an xDS-enabled gRPC
// server and frontend and backend are its clients, each proving its identity
// with a join token.
func policyMeshHCL(greeterPort int) string {
	return fmt.Sprintf(`mesh { trust_domain = "mesh.test" }

identity {
  mtls = "strict"
  join_token "greeter" {
    token = %q
  }
  join_token "frontend" {
    token = %q
  }
  join_token "backend" {
    token = %q
  }
}

service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = %d
  }
}
service "frontend" {
  protocol = "grpc"
}
service "backend" {
  protocol = "grpc"
}
`, policyGreeterToken, policyFrontendToken, policyBackendToken, greeterPort)
}

// policyRule allows one service to call greeter's test service (the issue's
// rule, for gRPC: every call is a POST to /<service>/<method>).
func policyRule(caller string) string {
	return fmt.Sprintf(`authorization "greeter" {
  namespace = "default"
  rule {
    action = "allow"
    from { services = [%q] }
    to { methods = ["POST"]  paths = ["/grpc.testing.TestService/*"] }
  }
}
`, caller)
}

// callCode makes one RPC and returns its status code.
func callCode(t *testing.T, c *meshtest.Client) codes.Code {
	t.Helper()
	_, err := c.Call(t.Context())
	return status.Code(err)
}

// wantCodes waits until each client's calls end with its code.
func wantCodes(t *testing.T, timeout time.Duration, want map[*meshtest.Client]codes.Code, names map[*meshtest.Client]string) time.Duration {
	t.Helper()
	start := time.Now()
	meshtest.Eventually(t, timeout, func() error {
		var errs []error
		for c, code := range want {
			if got := callCode(t, c); got != code {
				errs = append(errs, fmt.Errorf("%s: %v, want %v", names[c], got, code))
			}
		}
		return errors.Join(errs...)
	})
	return time.Since(start)
}

// TestPolicyRBACByTraffic: the authorization rules of greeter, compiled into
// the RBAC of its xDS-enabled gRPC server, decide real RPCs from clients with
// mTLS identities from the CA; an edit of the rule file flips the outcome, a
// rejected file flips nothing.
func TestPolicyRBACByTraffic(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "mesh.hcl", policyMeshHCL(lis.Addr().(*net.TCPAddr).Port))
	meshtest.WriteFile(t, dir, "policy.hcl", policyRule("frontend"))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir})

	_, b := meshtest.BootstrapGRPC(t, srv, "greeter", "--cert-dir", t.TempDir(), "--token", policyGreeterToken)
	greeter := meshtest.StartXDSServer(t, "greeter", lis, b)
	frontend := meshtest.DialMTLS(t, srv, "frontend", "greeter", policyFrontendToken)
	backend := meshtest.DialMTLS(t, srv, "backend", "greeter", policyBackendToken)
	names := map[*meshtest.Client]string{frontend: "frontend", backend: "backend"}

	t.Run("allowed calls succeed, denied ones get PERMISSION_DENIED", func(t *testing.T) {
		wantCodes(t, 30*time.Second, map[*meshtest.Client]codes.Code{frontend: codes.OK, backend: codes.PermissionDenied}, names)
		for range 10 {
			resp, _, err := frontend.PeerCall(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetHostname() != policyFrontendID {
				t.Fatalf("greeter saw caller %q, want %s", resp.GetHostname(), policyFrontendID)
			}
			if c := callCode(t, backend); c != codes.PermissionDenied {
				t.Fatalf("backend: %v", c)
			}
		}
		if !greeter.Serving() {
			t.Fatal("greeter is not serving")
		}
	})

	t.Run("editing the rule file flips the outcome", func(t *testing.T) {
		before := greeter.Calls.Load()
		meshtest.WriteFile(t, dir, "policy.hcl", policyRule("backend"))
		took := wantCodes(t, 30*time.Second, map[*meshtest.Client]codes.Code{frontend: codes.PermissionDenied, backend: codes.OK}, names)
		t.Logf("the edit took effect within %s", took.Round(10*time.Millisecond))
		resp, _, err := backend.PeerCall(t.Context())
		if err != nil || resp.GetHostname() != policyBackendID {
			t.Fatalf("backend call: %v, greeter saw %q", err, resp.GetHostname())
		}
		if greeter.Calls.Load() == before {
			t.Fatal("greeter served nothing after the edit")
		}
	})

	t.Run("a rejected file flips nothing", func(t *testing.T) {
		// Allowing frontend again, but with a path that can never match.
		meshtest.WriteFile(t, dir, "policy.hcl", strings.ReplaceAll(policyRule("frontend"), `"/grpc.testing.TestService/*"`, `"grpc.testing.TestService/*"`))
		meshtest.Eventually(t, 30*time.Second, func() error {
			var st config.Status
			srv.GetJSON(t, "/v1/config", &st)
			for _, r := range st.Rejected {
				if strings.HasSuffix(r.Name, "policy.hcl") {
					return nil
				}
			}
			return fmt.Errorf("policy.hcl not rejected yet: %+v", st)
		})
		// What was in force still decides.
		for range 20 {
			if c := callCode(t, backend); c != codes.OK {
				t.Fatalf("backend: %v after a rejected edit", c)
			}
			if c := callCode(t, frontend); c != codes.PermissionDenied {
				t.Fatalf("frontend: %v after a rejected edit", c)
			}
		}
	})
}

// TestPolicydCommand runs `bowline policyd --config DIR --grpc-addr
// HOST:PORT --http-addr HOST:PORT` as users do: it decides ext_authz checks
// from the directory alone, serves its HTTP endpoints, and decides the same
// after a restart (it keeps no state).
func TestPolicydCommand(t *testing.T) {
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "mesh.hcl", policyMeshHCL(50051))
	meshtest.WriteFile(t, dir, "policy.hcl", policyRule("frontend"))
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort(t))
	start := func() func() {
		cmd := exec.Command(meshtest.Binary(t), "policyd", "--config", dir, "--grpc-addr", grpcAddr, "--http-addr", httpAddr)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		stop := func() {
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
		t.Cleanup(func() {
			stop()
			if t.Failed() {
				t.Logf("policyd output:\n%s", out.String())
			}
		})
		meshtest.Eventually(t, 30*time.Second, func() error {
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
		return stop
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	check := func(src string) codes.Code {
		t.Helper()
		resp, err := client.Check(t.Context(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:      &authv3.AttributeContext_Peer{Principal: src},
			Destination: &authv3.AttributeContext_Peer{Principal: "spiffe://mesh.test/ns/default/svc/greeter"},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "POST", Path: "/grpc.testing.TestService/UnaryCall", Host: "greeter"}},
			ContextExtensions: map[string]string{"destination": "default/greeter"},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.GetStatus().GetCode())
	}
	for round, stop := range []func(){start(), nil} {
		if round == 1 {
			stop = start() // a restarted policyd decides as before
		}
		if c := check(policyFrontendID); c != codes.OK {
			t.Fatalf("round %d: frontend: %v", round, c)
		}
		if c := check(policyBackendID); c != codes.PermissionDenied {
			t.Fatalf("round %d: backend: %v", round, c)
		}
		resp, err := http.Get("http://" + httpAddr + "/v1/rules")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), `policy.hcl:3"`) {
			t.Fatalf("/v1/rules does not name the rule's file and line:\n%s", body)
		}
		stop()
	}
}
