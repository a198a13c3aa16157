package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/test/meshtest"
	"github.com/bowlinemesh/bowline/xds/bootstrap"
)

const (
	greeterToken = "greeter-join-token-0123456789"
	clientToken  = "client-join-token-0123456789"
	webToken     = "web-join-token-0123456789"
	greeterID    = "spiffe://bowline.local/ns/default/svc/greeter"
	clientID     = "spiffe://bowline.local/ns/default/svc/client"
	webID        = "spiffe://bowline.local/ns/default/svc/web"
)

// identityHCL is a mesh with join tokens for greeter, client and web;
// greeter (an xDS-enabled gRPC server) listens on greeterPort, and web has
// an Envoy sidecar.
func identityHCL(mode, ttl string, greeterPort int) string {
	return fmt.Sprintf(`identity {
  mtls     = %q
  cert_ttl = %q

  join_token "greeter" {
    token = %q
  }
  join_token "client" {
    token = %q
  }
  join_token "web" {
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

service "web" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
}
`, mode, ttl, greeterToken, clientToken, webToken, greeterPort)
}

// greeterMesh starts bowline server with identityHCL and reserves greeter's
// listener.
func greeterMesh(t *testing.T, mode, ttl string) (*meshtest.Server, net.Listener, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "mesh.hcl", identityHCL(mode, ttl, lis.Addr().(*net.TCPAddr).Port))
	return meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir}), lis, dir
}

// startGreeter bootstraps greeter with its certificate and serves it.
func startGreeter(t *testing.T, srv *meshtest.Server, lis net.Listener) *meshtest.XDSServer {
	t.Helper()
	_, b := meshtest.BootstrapGRPC(t, srv, "greeter", "--cert-dir", t.TempDir(), "--token", greeterToken)
	return meshtest.StartXDSServer(t, "greeter", lis, b)
}

// waitSynced waits until a client has ACKed the configuration it was sent,
// so that what fails next is the connection, not missing configuration.
func waitSynced(t *testing.T, srv *meshtest.Server, c *meshtest.Client) {
	t.Helper()
	c.Conn.Connect()
	meshtest.Eventually(t, 30*time.Second, func() error {
		p, err := proxyStatus(t, srv, c.NodeID)
		if err != nil {
			return err
		}
		for _, typ := range []string{"listeners", "routes", "clusters", "endpoints"} {
			if p.Sent[typ] == "" || p.Acked[typ] != p.Sent[typ] {
				return fmt.Errorf("%s: sent %q, acked %q (last NACK %+v)", typ, p.Sent[typ], p.Acked[typ], p.LastNACK)
			}
		}
		return nil
	})
}

// mustFail makes a few RPCs that must all fail.
func mustFail(t *testing.T, c *meshtest.Client, what string) {
	t.Helper()
	for range 3 {
		if id, err := c.Call(t.Context()); err == nil {
			t.Fatalf("%s: an RPC succeeded (answered by %s)", what, id)
		}
	}
}

func TestIdentityMTLSStrict(t *testing.T) {
	ctx := t.Context()
	srv, lis, _ := greeterMesh(t, "strict", "24h")
	greeter := startGreeter(t, srv, lis)

	t.Run("RPCs go over mTLS and the server sees the client's SPIFFE ID", func(t *testing.T) {
		c := meshtest.DialMTLS(t, srv, "client", "greeter", clientToken)
		meshtest.Eventually(t, 30*time.Second, func() error { _, err := c.Call(ctx); return err })
		for range 20 {
			resp, serverCert, err := c.PeerCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetServerId() != "greeter" || resp.GetHostname() != clientID {
				t.Fatalf("answered by %q, which saw caller %q; want greeter seeing %s", resp.GetServerId(), resp.GetHostname(), clientID)
			}
			if serverCert == nil || len(serverCert.URIs) != 1 || serverCert.URIs[0].String() != greeterID {
				t.Fatalf("the client did not see greeter's certificate: %+v", serverCert)
			}
		}
		if !greeter.Serving() {
			t.Error("greeter is not in serving mode")
		}
	})

	t.Run("a client whose certificate comes from another CA is refused", func(t *testing.T) {
		// It trusts the mesh's roots (so that it accepts greeter) but holds
		// a certificate for client's own SPIFFE ID signed by another CA.
		_, roots := srv.Get(t, "/v1/ca/roots")
		other, err := identity.New(ctx, identity.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("bowline.local")})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := other.Issue(spiffeid.RequireFromString(clientID), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		for name, data := range map[string][]byte{bootstrap.CAFile: roots, bootstrap.CertFile: cert.ChainPEM, bootstrap.KeyFile: cert.KeyPEM} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		nodeID := "foreign-" + t.Name()
		b, err := bootstrap.GRPC(bootstrap.Options{Service: "client", Namespace: "default", XDSAddr: srv.XDSAddr, NodeID: nodeID, CertDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		c := meshtest.DialBootstrap(t, nodeID, b, "greeter", true)
		waitSynced(t, srv, c)
		before := greeter.Calls.Load()
		mustFail(t, c, "a client certified by another CA")
		if greeter.Calls.Load() != before {
			t.Fatal("greeter served a client certified by another CA")
		}
		if _, ok := greeter.ClientSerials()[cert.Serial]; ok {
			t.Fatal("greeter accepted the foreign certificate")
		}
	})

	t.Run("strict refuses a plaintext client", func(t *testing.T) {
		c := meshtest.Dial(t, srv, "plain", "greeter")
		waitSynced(t, srv, c)
		mustFail(t, c, "a plaintext client in strict mode")
	})
}

func TestIdentityMTLSPermissive(t *testing.T) {
	ctx := t.Context()
	srv, lis, dir := greeterMesh(t, "permissive", "24h")
	greeter := startGreeter(t, srv, lis)

	plain := meshtest.Dial(t, srv, "plain", "greeter")
	mtls := meshtest.DialMTLS(t, srv, "client", "greeter", clientToken)
	for name, c := range map[string]*meshtest.Client{"plaintext client": plain, "client with an identity": mtls} {
		var resp string
		meshtest.Eventually(t, 30*time.Second, func() error {
			r, _, err := c.PeerCall(ctx)
			resp = r.GetHostname()
			return err
		})
		// A proxyless gRPC server cannot tell TLS from plaintext: permissive
		// serves plaintext to everyone (docs/identity.md).
		if resp != meshtest.Plaintext {
			t.Errorf("%s: greeter saw %q, want a plaintext caller", name, resp)
		}
	}

	// Moving the mesh to strict: the plaintext client is cut off, the client
	// with an identity moves to mTLS.
	meshtest.WriteFile(t, dir, "mesh.hcl", identityHCL("strict", "24h", lis.Addr().(*net.TCPAddr).Port))
	meshtest.Eventually(t, 30*time.Second, func() error {
		r, _, err := mtls.PeerCall(ctx)
		if err != nil {
			return err
		}
		if r.GetHostname() != clientID {
			return fmt.Errorf("greeter sees %q", r.GetHostname())
		}
		return nil
	})
	meshtest.Eventually(t, 30*time.Second, func() error {
		if _, err := plain.Call(ctx); err == nil {
			return errors.New("the plaintext client is still served")
		}
		return nil
	})
	mustFail(t, plain, "a plaintext client once the mesh is strict")
	_ = greeter
}

// TestIdentityRotation runs RPCs without pause while, with a 4s certificate
// lifetime, the workloads' certificates are renewed several times, and then
// the CA's root is rotated with the documented steps: no RPC may fail.
func TestIdentityRotation(t *testing.T) {
	const ttl = 4 * time.Second
	ctx := t.Context()
	srv, lis, _ := greeterMesh(t, "strict", ttl.String())
	gw := meshtest.StartCertWatcher(t, srv, "greeter", "--cert-dir", t.TempDir(), "--token", greeterToken, "--cert-refresh", "200ms")
	// Connections live 500ms, so that new handshakes use the current files.
	greeter := meshtest.StartXDSServer(t, "greeter", lis, gw.Bootstrap,
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: 500 * time.Millisecond, MaxConnectionAgeGrace: 10 * time.Second}))
	cw := meshtest.StartCertWatcher(t, srv, "client", "--cert-dir", t.TempDir(), "--token", clientToken, "--cert-refresh", "200ms")
	c := meshtest.DialBootstrap(t, cw.NodeID, cw.Bootstrap, "greeter", true)
	meshtest.Eventually(t, 30*time.Second, func() error { _, err := c.Call(ctx); return err })

	var (
		ok, failed    atomic.Int64
		mu            sync.Mutex
		firstErrs     []error
		serverSerials = map[string]bool{}
		stop          = make(chan struct{})
		done          = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, cert, err := c.PeerCall(ctx)
			mu.Lock()
			switch {
			case err != nil:
				failed.Add(1)
				if len(firstErrs) < 5 {
					firstErrs = append(firstErrs, err)
				}
			case resp.GetHostname() != clientID || cert == nil:
				failed.Add(1)
				if len(firstErrs) < 5 {
					firstErrs = append(firstErrs, fmt.Errorf("greeter saw %q", resp.GetHostname()))
				}
			default:
				ok.Add(1)
				serverSerials[cert.SerialNumber.Text(16)] = true
			}
			mu.Unlock()
		}
	}()
	finish := func() {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		if failed.Load() > 0 {
			t.Fatalf("%d of %d RPCs failed during rotation, first: %v", failed.Load(), failed.Load()+ok.Load(), firstErrs)
		}
	}
	defer func() {
		select {
		case <-done:
		default:
			close(stop)
			<-done
		}
	}()

	// 1. Leaf certificates are replaced at half-life.
	meshtest.Eventually(t, 60*time.Second, func() error {
		mu.Lock()
		n := len(serverSerials)
		mu.Unlock()
		if got := len(greeter.ClientSerials()); got < 3 || n < 3 {
			return fmt.Errorf("greeter saw %d client certificates and the client %d server certificates; want 3 each", got, n)
		}
		return nil
	})

	// 2. The root is rotated, one lifetime between phases, RPCs going on.
	oldRoots := rootsOf(t, srv)
	for _, phase := range []string{"prepare", "activate", "finish"} {
		meshtest.Eventually(t, 60*time.Second, func() error {
			code, body := post(t, srv, "/v1/ca/rotate", `{"phase": "`+phase+`"}`)
			if code != http.StatusOK {
				return fmt.Errorf("%s: %d %s", phase, code, body)
			}
			return nil
		})
	}
	newRoots := rootsOf(t, srv)
	if len(newRoots) != 1 || newRoots[0].Equal(oldRoots[0]) {
		t.Fatalf("after the rotation the bundle holds %d roots, the old one included: %t", len(newRoots), newRoots[0].Equal(oldRoots[0]))
	}
	// Traffic goes on with certificates from the new root.
	newSKID := hex.EncodeToString(newRoots[0].SubjectKeyId)
	meshtest.Eventually(t, 60*time.Second, func() error {
		n := 0
		for _, issuer := range greeter.ClientSerials() {
			if issuer == newSKID {
				n++
			}
		}
		if n < 2 {
			return fmt.Errorf("greeter saw %d client certificates from the new root, want 2", n)
		}
		return nil
	})
	finish()
	t.Logf("%d RPCs, none failed; greeter saw %d client certificates", ok.Load(), len(greeter.ClientSerials()))
}

func rootsOf(t *testing.T, srv *meshtest.Server) []*x509.Certificate {
	t.Helper()
	code, body := srv.Get(t, "/v1/ca/roots")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/ca/roots: %d %s", code, body)
	}
	roots, err := identity.ParseCerts(body)
	if err != nil {
		t.Fatal(err)
	}
	return roots
}

func post(t *testing.T, srv *meshtest.Server, path, body string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+srv.AdminAddr+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// sidecarSecrets connects as web's Envoy sidecar presenting token and returns
// the secrets the server sends it (its SDS subscription: "default" and
// "ROOTCA", as Envoy asks for them).
func sidecarSecrets(t *testing.T, srv *meshtest.Server, nodeID, token string) []*tlsv3.Secret {
	t.Helper()
	meta := map[string]any{"kind": "envoy", "service": "web", "namespace": "default"}
	if token != "" {
		meta["token"] = token
	}
	md, err := structpb.NewStruct(meta)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(srv.XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: nodeID, Cluster: "web", Metadata: md}
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: node, TypeUrl: resourcev3.SecretType, ResourceNames: []string{"default", "ROOTCA"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("no SDS response: %v", err)
	}
	var out []*tlsv3.Secret
	for _, a := range resp.GetResources() {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	// The server's own record agrees with what was sent.
	var dump struct {
		Secrets []struct {
			Name string `json:"name"`
		} `json:"secrets"`
	}
	srv.GetJSON(t, "/v1/proxies/"+nodeID+"/config", &dump)
	if len(dump.Secrets) != len(out) {
		t.Errorf("config dump shows %d secrets, the stream carried %d", len(dump.Secrets), len(out))
	}
	if _, body := srv.Get(t, "/v1/proxies/"+nodeID+"/config"); bytes.Contains(body, []byte("PRIVATE KEY")) {
		t.Error("the config dump shows a private key")
	}
	return out
}

func TestIdentityUnprovenClaimGetsNoSecret(t *testing.T) {
	srv, _, _ := greeterMesh(t, "strict", "24h")

	t.Run("proxyless gRPC: no proof, no certificate", func(t *testing.T) {
		for _, tc := range []struct{ name, service, token string }{
			{"no token", "greeter", ""},
			{"wrong token", "greeter", "not-the-token-0123456789"},
			{"another service's token", "greeter", clientToken},
		} {
			dir := filepath.Join(t.TempDir(), "certs")
			args := []string{"bootstrap", "grpc", "--service", tc.service, "--xds-addr", srv.XDSAddr, "--cert-dir", dir}
			if tc.token != "" {
				args = append(args, "--token", tc.token)
			}
			out, errOut, code := meshtest.Run(t, args...)
			if code != 1 || !strings.Contains(errOut, "refused the claim to be default/greeter") || out != "" {
				t.Errorf("%s: exit %d, stdout %q, stderr %q", tc.name, code, out, errOut)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: the certificate directory was written", tc.name)
			}
		}
	})

	t.Run("Envoy sidecar: only a proven one gets its certificate over SDS", func(t *testing.T) {
		for i, tc := range []struct{ name, token string }{
			{"no token", ""},
			{"wrong token", "not-the-token-0123456789"},
			{"another service's token", greeterToken},
		} {
			if got := sidecarSecrets(t, srv, fmt.Sprintf("web-unproven-%d", i), tc.token); len(got) != 0 {
				t.Errorf("%s: the sidecar received %d secrets", tc.name, len(got))
			}
		}
		secrets := sidecarSecrets(t, srv, "web-proven", webToken)
		names := []string{}
		for _, s := range secrets {
			names = append(names, s.GetName())
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"ROOTCA", "default"}) {
			t.Fatalf("secrets = %q, want exactly its certificate and the bundle", names)
		}
		var cert, bundle []byte
		for _, s := range secrets {
			switch s.GetName() {
			case "default":
				cert = s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
				if svid, err := x509svid.Parse(cert, s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()); err != nil || svid.ID.String() != webID {
					t.Fatalf("the certificate is not web's SVID with its key: %v", err)
				}
			case "ROOTCA":
				bundle = s.GetValidationContext().GetTrustedCa().GetInlineBytes()
			}
		}
		roots, err := identity.ParseCerts(bundle)
		if err != nil {
			t.Fatal(err)
		}
		chain, _ := identity.ParseCerts(cert)
		if id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("bowline.local"), roots)); err != nil || id.String() != webID {
			t.Fatalf("the certificate does not verify against the bundle: %s %v", id, err)
		}
	})

	_, body := srv.Get(t, "/metrics")
	for _, m := range []string{
		`bowline_identity_attestation_failures_total{reason="no_token",via="sign"} 1`,
		`bowline_identity_attestation_failures_total{reason="unproven",via="sign"} 1`,
		`bowline_identity_attestation_failures_total{reason="mismatch",via="sign"} 1`,
		`bowline_identity_attestation_failures_total{reason="no_token",via="xds"} 1`,
		`bowline_identity_attestation_failures_total{reason="unproven",via="xds"} 1`,
		`bowline_identity_attestation_failures_total{reason="mismatch",via="xds"} 1`,
	} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	if !strings.Contains(srv.Log(), "claim refused; no certificate given") {
		t.Error("refusals are not logged")
	}
}

func TestIdentityAdminAPI(t *testing.T) {
	srv, _, _ := greeterMesh(t, "strict", "24h")
	dir := t.TempDir()
	meshtest.BootstrapGRPC(t, srv, "greeter", "--cert-dir", dir, "--token", greeterToken)
	certPEM, err := os.ReadFile(filepath.Join(dir, bootstrap.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := identity.ParseCerts(certPEM)
	if st, _ := os.Stat(filepath.Join(dir, bootstrap.KeyFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode = %v, want 0600", st.Mode().Perm())
	}

	roots := rootsOf(t, srv)
	if _, _, err := x509svid.Verify(leaf, x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("bowline.local"), roots)); err != nil {
		t.Fatalf("cert.pem does not verify against /v1/ca/roots: %v", err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, bootstrap.CAFile))
	if _, body := srv.Get(t, "/v1/ca/roots"); !bytes.Equal(caPEM, body) {
		t.Error("ca.pem differs from /v1/ca/roots")
	}

	var certs struct {
		Certificates []identity.IssuedCert `json:"certificates"`
	}
	srv.GetJSON(t, "/v1/certs", &certs)
	if len(certs.Certificates) != 1 || certs.Certificates[0].Serial != leaf[0].SerialNumber.Text(16) ||
		certs.Certificates[0].SPIFFEID != greeterID || certs.Certificates[0].Via != "csr" || !certs.Certificates[0].NotAfter.Equal(leaf[0].NotAfter) {
		t.Fatalf("/v1/certs = %+v", certs)
	}
	if _, body := srv.Get(t, "/v1/certs"); bytes.Contains(body, []byte("PRIVATE")) {
		t.Error("/v1/certs shows a key")
	}
	out, errOut, code := meshtest.Run(t, "ca", "certs", "--admin-addr", srv.AdminAddr)
	if code != 0 || !strings.Contains(out, greeterID) || !strings.Contains(out, leaf[0].SerialNumber.Text(16)) {
		t.Errorf("bowline ca certs: exit %d\n%s%s", code, out, errOut)
	}

	// Rotation through the API: prepare adds a root; activating at once is
	// refused (the workloads must first receive the new bundle).
	if code, body := post(t, srv, "/v1/ca/rotate", `{"phase": "prepare"}`); code != http.StatusOK {
		t.Fatalf("prepare: %d %s", code, body)
	}
	if got := rootsOf(t, srv); len(got) != 2 || !got[0].Equal(roots[0]) {
		t.Fatalf("after prepare the bundle holds %d roots", len(got))
	}
	if code, body := post(t, srv, "/v1/ca/rotate", `{"phase": "activate"}`); code != http.StatusConflict || !strings.Contains(body, "wait until") {
		t.Fatalf("early activate: %d %s, want 409", code, body)
	}
	out, errOut, code = meshtest.Run(t, "ca", "rotate", "activate", "--admin-addr", srv.AdminAddr)
	if code != 1 || !strings.Contains(errOut, "wait until") {
		t.Errorf("bowline ca rotate activate: exit %d\n%s%s", code, out, errOut)
	}
}

func TestIdentityExampleValidates(t *testing.T) {
	out, errOut, code := meshtest.Run(t, "validate", "../../examples/mtls")
	if code != 0 {
		t.Fatalf("bowline validate examples/mtls: exit %d\n%s%s", code, out, errOut)
	}
}
