package meshtest

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"
)

// Plaintext is what an XDSServer reports for a caller without a certificate.
const Plaintext = "plaintext"

// BootstrapGRPC runs `bowline bootstrap grpc --service SERVICE` with extra
// arguments (--cert-dir, --token, …) and returns the node id and bootstrap;
// it fails the test unless the command succeeds.
func BootstrapGRPC(t testing.TB, srv *Server, service string, args ...string) (nodeID string, bootstrap []byte) {
	t.Helper()
	nodeID = fmt.Sprintf("%s-%s-%d", service, strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano())
	all := append([]string{"bootstrap", "grpc", "--service", service, "--xds-addr", srv.XDSAddr, "--node-id", nodeID}, args...)
	out, errOut, code := Run(t, all...)
	if code != 0 {
		t.Fatalf("bowline %s: exit %d: %s", strings.Join(all, " "), code, errOut)
	}
	return nodeID, []byte(out)
}

// CertWatcher is a running `bowline bootstrap grpc --cert-dir DIR --watch`.
type CertWatcher struct {
	NodeID    string
	Bootstrap []byte
	cmd       *exec.Cmd
	done      chan struct{}
	mu        sync.Mutex
	log       strings.Builder
}

// StartCertWatcher runs `bowline bootstrap grpc ... --watch`, which prints the
// bootstrap and keeps renewing the certificate files; it stops when the test
// ends.
func StartCertWatcher(t testing.TB, srv *Server, service string, args ...string) *CertWatcher {
	t.Helper()
	w := &CertWatcher{NodeID: fmt.Sprintf("%s-%s-%d", service, strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano()), done: make(chan struct{})}
	all := append([]string{"bootstrap", "grpc", "--service", service, "--xds-addr", srv.XDSAddr, "--node-id", w.NodeID, "--watch"}, args...)
	w.cmd = exec.Command(Binary(t), all...)
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := w.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatalf("meshtest: start bowline %s: %v", strings.Join(all, " "), err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			w.mu.Lock()
			w.log.WriteString(sc.Text() + "\n")
			w.mu.Unlock()
		}
	}()
	go func() { _ = w.cmd.Wait(); close(w.done) }()
	t.Cleanup(func() {
		w.Stop()
		if t.Failed() {
			t.Logf("cert watcher %s log:\n%s", service, w.Log())
		}
	})
	var raw json.RawMessage
	decoded := make(chan error, 1)
	go func() { decoded <- json.NewDecoder(stdout).Decode(&raw) }()
	select {
	case err := <-decoded:
		if err != nil {
			w.Stop()
			t.Fatalf("meshtest: bowline %s printed no bootstrap: %v\n%s", strings.Join(all, " "), err, w.Log())
		}
	case <-time.After(60 * time.Second):
		w.Stop()
		t.Fatalf("meshtest: bowline %s printed no bootstrap within 60s\n%s", strings.Join(all, " "), w.Log())
	}
	w.Bootstrap = raw
	return w
}

// Log returns what the watcher printed on stderr.
func (w *CertWatcher) Log() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.log.String()
}

// Stop ends the watcher (SIGINT, then kill after 5s).
func (w *CertWatcher) Stop() {
	select {
	case <-w.done:
		return
	default:
	}
	_ = w.cmd.Process.Signal(os.Interrupt)
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.done
	}
}

// DialBootstrap dials xds:///target with a bootstrap. With secure set, the
// client uses gRPC-Go's xDS credentials (mTLS as the control plane
// configures it, plaintext when it configures none); otherwise insecure
// credentials.
func DialBootstrap(t testing.TB, nodeID string, bootstrap []byte, target string, secure bool) *Client {
	t.Helper()
	builder, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatalf("xds resolver from bootstrap: %v\n%s", err, bootstrap)
	}
	creds := insecure.NewCredentials()
	if secure {
		if creds, err = xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()}); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(builder), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("dial xds:///%s: %v", target, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Client{NodeID: nodeID, Conn: conn, Stub: testgrpc.NewTestServiceClient(conn)}
}

// DialMTLS is Dial for a workload with an identity: `bowline bootstrap grpc
// --cert-dir DIR --token TOKEN` proves it and writes its certificate, and
// the client uses xDS credentials.
func DialMTLS(t testing.TB, srv *Server, service, target, token string, extraBootstrapArgs ...string) *Client {
	t.Helper()
	args := append([]string{"--cert-dir", t.TempDir(), "--token", token}, extraBootstrapArgs...)
	nodeID, bootstrap := BootstrapGRPC(t, srv, service, args...)
	return DialBootstrap(t, nodeID, bootstrap, target, true)
}

// PeerCall makes one RPC and returns the answer and the server's
// certificate, when the connection has one.
func (c *Client) PeerCall(ctx context.Context) (*testpb.SimpleResponse, *x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var p peer.Peer
	resp, err := c.Stub.UnaryCall(ctx, &testpb.SimpleRequest{FillServerId: true}, grpc.Peer(&p))
	if err != nil {
		return nil, nil, err
	}
	return resp, peerCert(p.AuthInfo), nil
}

func peerCert(ai credentials.AuthInfo) *x509.Certificate {
	if ti, ok := ai.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		return ti.State.PeerCertificates[0]
	}
	return nil
}

// XDSServer is an xDS-enabled gRPC server (google.golang.org/grpc/xds) with
// xDS credentials: its listener, filter chains and TLS come from bowline
// server. It answers grpc.testing.TestService with its ID in ServerId and
// the caller's SPIFFE ID (or Plaintext) in Hostname, and records the serials
// of the client certificates it saw.
type XDSServer struct {
	ID    string
	Addr  string
	Calls atomic.Int64
	srv   *xds.GRPCServer

	mu      sync.Mutex
	serials map[string]string // client certificate serial -> its issuer's serial
	serving bool
	testgrpc.UnimplementedTestServiceServer
}

// StartXDSServer serves on lis (whose address the service's endpoint in the
// configuration names) with the bootstrap of the server's workload.
func StartXDSServer(t testing.TB, id string, lis net.Listener, bootstrap []byte, opts ...grpc.ServerOption) *XDSServer {
	t.Helper()
	s := &XDSServer{ID: id, Addr: lis.Addr().String(), serials: map[string]string{}}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, grpc.Creds(creds), xds.BootstrapContentsForTesting(bootstrap),
		xds.ServingModeCallback(func(_ net.Addr, args xds.ServingModeChangeArgs) {
			s.mu.Lock()
			s.serving = args.Mode == connectivity.ServingModeServing
			s.mu.Unlock()
		}))
	srv, err := xds.NewGRPCServer(opts...)
	if err != nil {
		t.Fatalf("xds.NewGRPCServer: %v", err)
	}
	s.srv = srv
	testgrpc.RegisterTestServiceServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return s
}

// Serving reports whether the server received a listener it serves with.
func (s *XDSServer) Serving() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serving
}

// ClientSerials returns the serials of the client certificates seen, each
// with the serial of its issuer.
func (s *XDSServer) ClientSerials() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.serials))
	for k, v := range s.serials {
		out[k] = v
	}
	return out
}

// UnaryCall implements the test service.
func (s *XDSServer) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.Calls.Add(1)
	caller := Plaintext
	if p, ok := peer.FromContext(ctx); ok {
		if c := peerCert(p.AuthInfo); c != nil {
			if len(c.URIs) > 0 {
				caller = c.URIs[0].String()
			}
			s.mu.Lock()
			s.serials[c.SerialNumber.Text(16)] = fmt.Sprintf("%x", c.AuthorityKeyId)
			s.mu.Unlock()
		}
	}
	return &testpb.SimpleResponse{ServerId: s.ID, Hostname: caller}, nil
}
