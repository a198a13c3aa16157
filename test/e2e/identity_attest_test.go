package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/adapters/kubernetes"
	"github.com/bowlinemesh/bowline/adapters/kubernetes/kubetest"
	"github.com/bowlinemesh/bowline/adapters/nomad/nomadtest"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/identity/attest"
	"github.com/bowlinemesh/bowline/test/consulagent"
	"github.com/bowlinemesh/bowline/test/meshtest"
	"github.com/bowlinemesh/bowline/xds/bootstrap"
	"github.com/bowlinemesh/bowline/xds/controlplane"
)

// webSidecarHCL declares web with a sidecar in the file registry (the
// platform registries may add endpoints of their own).
const webSidecarHCL = `service "web" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
}
`

// certID returns the SPIFFE ID of the certificate in a --cert-dir.
func certID(t *testing.T, dir string) string {
	t.Helper()
	certPEM, err := os.ReadFile(filepath.Join(dir, bootstrap.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, bootstrap.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return svid.ID.String()
}

// refusedSign runs `bowline bootstrap grpc --cert-dir` for service with a
// token that must be refused: exit 1, no bootstrap, no file.
func refusedSign(t *testing.T, srv *meshtest.Server, service, token string, extra ...string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	args := append([]string{"bootstrap", "grpc", "--service", service, "--xds-addr", srv.XDSAddr, "--cert-dir", dir, "--token", token}, extra...)
	out, errOut, code := meshtest.Run(t, args...)
	if code != 1 || out != "" || !strings.Contains(errOut, "refused the claim to be default/"+service) {
		t.Errorf("exit %d, stdout %q, stderr %q; want a refusal", code, out, errOut)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Error("the certificate directory was written")
	}
}

// sidecarCert returns the SPIFFE ID of the "default" secret among a
// sidecar's secrets ("" when there is none), checking that it comes with
// the bundle and its key.
func sidecarCert(t *testing.T, secrets []*tlsv3.Secret) string {
	t.Helper()
	var names []string
	id := ""
	for _, s := range secrets {
		names = append(names, s.GetName())
		if s.GetName() == "default" {
			svid, err := x509svid.Parse(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), s.GetTlsCertificate().GetPrivateKey().GetInlineBytes())
			if err != nil {
				t.Fatalf("the sidecar's certificate: %v", err)
			}
			id = svid.ID.String()
		}
	}
	slices.Sort(names)
	if len(names) > 0 && !slices.Equal(names, []string{"ROOTCA", "default"}) {
		t.Fatalf("secrets = %q, want the certificate and the bundle", names)
	}
	return id
}

// wantMetrics checks lines of /metrics.
func wantMetrics(t *testing.T, srv *meshtest.Server, lines ...string) {
	t.Helper()
	_, body := srv.Get(t, "/metrics")
	for _, m := range lines {
		if !strings.Contains(string(body), m+"\n") {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

const e2eNomadToken = "nomad-e2e-read-token-0123456789"

func TestIdentityAttestNomad(t *testing.T) {
	nomad := nomadtest.Start(t, nomadtest.Options{Token: e2eNomadToken})
	nomad.SubmitJob(nomadtest.Job{ID: "web", Services: []nomadtest.Service{{Name: "web", PortLabel: "http"}}})
	nomad.SubmitJob(nomadtest.Job{ID: "api", Services: []nomadtest.Service{{Name: "api", PortLabel: "http"}}})
	webAlloc := nomad.StartAlloc("default", "web", map[string]int{"http": meshtest.FreePort(t)})
	apiAlloc := nomad.StartAlloc("default", "api", map[string]int{"http": meshtest.FreePort(t)})
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "web.hcl", webSidecarHCL)
	meshtest.WriteFile(t, dir, "mesh.hcl", fmt.Sprintf(`nomad {
  address = %q
  token   = %q
}

identity {
  mtls = "strict"
  attest {
    nomad {
      audience = "bowline"
    }
  }
}
`, nomad.URL(), e2eNomadToken))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir})

	task := func(alloc, job string) nomadtest.Identity {
		return nomadtest.Identity{JobID: job, AllocID: alloc, Task: "sidecar", Name: "bowline", Audience: []string{"bowline"}, TTL: time.Hour}
	}
	expired := task(webAlloc, "web")
	expired.IssuedAt = time.Now().Add(-3 * time.Hour)

	t.Run("proxyless gRPC: the workload identity file proves its service", func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "nomad_bowline.jwt")
		if err := os.WriteFile(tokenFile, []byte(nomad.MintIdentity(task(webAlloc, "web"))+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		certs := t.TempDir()
		_, b := meshtest.BootstrapGRPC(t, srv, "web", "--cert-dir", certs, "--token-file", tokenFile)
		if got := certID(t, certs); got != webID {
			t.Fatalf("certificate for %s, want %s", got, webID)
		}
		if strings.Contains(string(b), "eyJ") {
			t.Error("the bootstrap holds the token")
		}
	})

	t.Run("proxyless gRPC: refused", func(t *testing.T) {
		refusedSign(t, srv, "web", nomad.MintIdentity(expired))                // unproven
		refusedSign(t, srv, "web", nomad.ForgeIdentity(task(webAlloc, "web"))) // unproven
		refusedSign(t, srv, "web", nomad.MintIdentity(task(apiAlloc, "api")))  // mismatch
	})

	t.Run("Envoy sidecar: the identity in its node metadata", func(t *testing.T) {
		if got := sidecarCert(t, sidecarSecrets(t, srv, "web-nomad-proven", nomad.MintIdentity(task(webAlloc, "web")))); got != webID {
			t.Fatalf("the proven sidecar's certificate: %q, want %s", got, webID)
		}
		if got := sidecarSecrets(t, srv, "web-nomad-expired", nomad.MintIdentity(expired)); len(got) != 0 {
			t.Fatalf("an expired identity got %d secrets", len(got))
		}
	})

	wantMetrics(t, srv,
		`bowline_identity_attestation_failures_total{reason="unproven",via="sign"} 2`,
		`bowline_identity_attestation_failures_total{reason="mismatch",via="sign"} 1`,
		`bowline_identity_attestation_failures_total{reason="unproven",via="xds"} 1`,
	)
	if strings.Contains(srv.Log(), "eyJ") {
		t.Error("the server logged a token")
	}
}

const e2eConsulManagement = "7d6c5b4a-3f2e-4d1c-8b0a-9f8e7d6c5b4a"

func TestIdentityAttestConsul(t *testing.T) {
	agent := consulagent.StartWith(t, consulagent.Options{ACLManagementToken: e2eConsulManagement})
	client, err := api.NewClient(&api.Config{Address: agent.Address(), Token: e2eConsulManagement})
	if err != nil {
		t.Fatal(err)
	}
	token := func(service string) string {
		tok, _, err := client.ACL().TokenCreate(&api.ACLToken{ServiceIdentities: []*api.ACLServiceIdentity{{ServiceName: service}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok.SecretID
	}
	webTok, apiTok := token("web"), token("api")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "web.hcl", webSidecarHCL)
	meshtest.WriteFile(t, dir, "mesh.hcl", fmt.Sprintf(`consul {
  address = %q
  token   = %q
}

identity {
  mtls = "strict"
  attest {
    consul {}
  }
}
`, agent.Address(), e2eConsulManagement))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir})

	certs := t.TempDir()
	meshtest.BootstrapGRPC(t, srv, "web", "--cert-dir", certs, "--token", webTok)
	if got := certID(t, certs); got != webID {
		t.Fatalf("certificate for %s, want %s", got, webID)
	}
	refusedSign(t, srv, "web", apiTok)                                 // mismatch
	refusedSign(t, srv, "web", "0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3") // unproven
	if got := sidecarCert(t, sidecarSecrets(t, srv, "web-consul-proven", webTok)); got != webID {
		t.Fatalf("the proven sidecar's certificate: %q, want %s", got, webID)
	}
	if got := sidecarSecrets(t, srv, "web-consul-other", apiTok); len(got) != 0 {
		t.Fatalf("another service's token got %d secrets", len(got))
	}
	wantMetrics(t, srv,
		`bowline_identity_attestation_failures_total{reason="mismatch",via="sign"} 1`,
		`bowline_identity_attestation_failures_total{reason="unproven",via="sign"} 1`,
		`bowline_identity_attestation_failures_total{reason="mismatch",via="xds"} 1`,
	)
	if strings.Contains(srv.Log(), webTok) || strings.Contains(srv.Log(), apiTok) {
		t.Error("the server logged a token")
	}
}

func TestIdentityAttestKubernetes(t *testing.T) {
	cluster := kubetest.New(t)
	tokens := kubetest.ServeTokenReviews(cluster.Clientset)
	pod := kubetest.PodSpec{Namespace: "default", Name: "web-1", IP: "127.0.0.1", App: "web", ServiceAccount: "web-sa", SidecarPort: 21000}
	cluster.Apply(kubetest.Service("default", "web", kubetest.Port("http", 8080)), pod.Pod(),
		kubetest.EndpointSlice("default", "web-1", "web", "http", 8080, pod.Endpoint(kubetest.Ready)))
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "mesh.hcl", "identity {\n  mtls = \"strict\"\n  attest {\n    kubernetes {\n      audiences = [\"bowline\"]\n    }\n  }\n}\n")
	srv, _ := meshtest.StartInProcess(t, controlplane.Options{
		ConfigDir: dir,
		Sources: func(cfg *config.Config, store *config.Store, log *slog.Logger) ([]discovery.Source, []config.FileSource, error) {
			return []discovery.Source{file.New(store), kubernetes.New(cluster, kubernetes.Config{TrustDomain: cfg.Mesh.TrustDomain}, log)}, nil, nil
		},
		// What cmd/bowline builds from the attest block, on the fake cluster.
		Attestors: func(cfg *config.Config, env controlplane.AttestEnv) ([]identity.Attestor, error) {
			k, err := attest.NewKubernetes(attest.KubernetesConfig{TrustDomain: env.TrustDomain, Client: cluster, Audiences: cfg.Attest().Kubernetes.Audiences, ServiceIdentities: env.ServiceIdentities})
			return []identity.Attestor{k}, err
		},
	})
	const saID = "spiffe://bowline.local/ns/default/sa/web-sa"
	meshtest.Eventually(t, 20*time.Second, func() error {
		var svc apiService
		srv.GetJSON(t, "/v1/services/default/web", &svc)
		if len(svc.Endpoints) != 1 || svc.Endpoints[0].Identity != saID {
			return fmt.Errorf("web = %+v", svc)
		}
		return nil
	})

	if got := sidecarCert(t, sidecarSecrets(t, srv, "web-k8s-proven", tokens.Issue("default", "web-sa", "bowline"))); got != saID {
		t.Fatalf("the proven sidecar's certificate: %q, want %s", got, saID)
	}
	for i, tok := range []string{
		tokens.Issue("default", "other-sa", "bowline"), // web runs as web-sa: mismatch
		tokens.Issue("default", "web-sa"),              // for the API server only: unproven
	} {
		if got := sidecarSecrets(t, srv, fmt.Sprintf("web-k8s-refused-%d", i), tok); len(got) != 0 {
			t.Fatalf("refused token %d got %d secrets", i, len(got))
		}
	}
	wantMetrics(t, srv,
		`bowline_identity_attestation_failures_total{reason="mismatch",via="xds"} 1`,
		`bowline_identity_attestation_failures_total{reason="unproven",via="xds"} 1`,
	)
}

// tlsMesh starts bowline server with --xds-tls, the identity mesh of
// identity_test.go, and returns the trust bundle's file.
func tlsMesh(t *testing.T) (*meshtest.Server, net.Listener, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "mesh.hcl", identityHCL("strict", "24h", lis.Addr().(*net.TCPAddr).Port))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--xds-tls"}})
	roots := filepath.Join(t.TempDir(), "mesh-ca.pem")
	_, body := srv.Get(t, "/v1/ca/roots")
	if err := os.WriteFile(roots, body, 0o644); err != nil {
		t.Fatal(err)
	}
	return srv, lis, roots
}

// adsSecrets opens an ADS stream as web's Envoy sidecar over conn and
// returns the secrets of the first SDS response, or the stream's error.
func adsSecrets(t *testing.T, conn *grpc.ClientConn, nodeID, token string) ([]*tlsv3.Secret, error) {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{"kind": "envoy", "service": "web", "namespace": "default", "token": token})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &core.Node{Id: nodeID, Cluster: "web", Metadata: md}, TypeUrl: resourcev3.SecretType, ResourceNames: []string{"default", "ROOTCA"}}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var out []*tlsv3.Secret
	for _, a := range resp.GetResources() {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out, nil
}

func TestIdentityXDSOverTLS(t *testing.T) {
	ctx := t.Context()
	srv, lis, roots := tlsMesh(t)

	t.Run("proxyless gRPC over TLS: certificates, configuration, mTLS RPCs", func(t *testing.T) {
		_, b := meshtest.BootstrapGRPC(t, srv, "greeter", "--cert-dir", t.TempDir(), "--token", greeterToken, "--xds-ca", roots)
		if !strings.Contains(string(b), `"type": "tls"`) {
			t.Fatalf("the bootstrap does not use TLS:\n%s", b)
		}
		greeter := meshtest.StartXDSServer(t, "greeter", lis, b)
		c := meshtest.DialMTLS(t, srv, "client", "greeter", clientToken, "--xds-ca", roots)
		meshtest.Eventually(t, 30*time.Second, func() error {
			resp, cert, err := c.PeerCall(ctx)
			if err != nil {
				return err
			}
			if resp.GetHostname() != clientID || cert == nil || cert.URIs[0].String() != greeterID {
				return fmt.Errorf("greeter saw %q", resp.GetHostname())
			}
			return nil
		})
		if !greeter.Serving() {
			t.Error("greeter is not serving")
		}
	})

	t.Run("Envoy sidecar over TLS gets its secrets", func(t *testing.T) {
		pool := x509.NewCertPool()
		b, _ := os.ReadFile(roots)
		pool.AppendCertsFromPEM(b)
		conn, err := grpc.NewClient(srv.XDSAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		secrets, err := adsSecrets(t, conn, "web-over-tls", webToken)
		if err != nil {
			t.Fatal(err)
		}
		if got := sidecarCert(t, secrets); got != webID {
			t.Fatalf("certificate %q, want %s", got, webID)
		}
	})

	t.Run("plaintext is refused", func(t *testing.T) {
		conn, err := grpc.NewClient(srv.XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := adsSecrets(t, conn, "web-plaintext", webToken); status.Code(err) != codes.Unavailable {
			t.Fatalf("a plaintext ADS stream: %v, want Unavailable", err)
		}
		// `bowline bootstrap grpc --cert-dir` without --xds-ca.
		dir := filepath.Join(t.TempDir(), "certs")
		out, errOut, code := meshtest.Run(t, "bootstrap", "grpc", "--service", "client", "--xds-addr", srv.XDSAddr, "--cert-dir", dir, "--token", clientToken)
		if code != 1 || out != "" {
			t.Errorf("plaintext signing request: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Error("the certificate directory was written")
		}
		// A gRPC xDS client with a plaintext bootstrap never gets configuration.
		plain := meshtest.Dial(t, srv, "plain", "greeter")
		callCtx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		if _, err := plain.Call(callCtx); err == nil {
			t.Error("a plaintext xDS client made an RPC")
		}
		if _, err := proxyStatus(t, srv, plain.NodeID); err == nil {
			t.Error("the plaintext client is connected")
		}
	})

	t.Run("a client that does not trust the mesh CA is refused", func(t *testing.T) {
		conn, err := grpc.NewClient(srv.XDSAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: x509.NewCertPool()})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := adsSecrets(t, conn, "web-untrusting", webToken); status.Code(err) != codes.Unavailable {
			t.Fatalf("a client that does not trust the CA: %v, want Unavailable", err)
		}
	})
}
