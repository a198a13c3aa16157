package meshtest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"
)

// Backend is a real gRPC server answering grpc.testing.TestService; each
// UnaryCall reports the backend's ID so tests can see where traffic went.
type Backend struct {
	ID    string
	Addr  string
	Port  int
	Calls atomic.Int64
	srv   *grpc.Server
	// Handler, when set, answers UnaryCall instead of the default.
	Handler func(ctx context.Context, b *Backend, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error)
	testgrpc.UnimplementedTestServiceServer
}

// StartBackend starts a backend on a free loopback port.
func StartBackend(t testing.TB, id string) *Backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{ID: id, Addr: lis.Addr().String(), Port: lis.Addr().(*net.TCPAddr).Port, srv: grpc.NewServer()}
	testgrpc.RegisterTestServiceServer(b.srv, b)
	go func() { _ = b.srv.Serve(lis) }()
	t.Cleanup(b.Stop)
	return b
}

// UnaryCall implements the test service.
func (b *Backend) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	b.Calls.Add(1)
	if b.Handler != nil {
		return b.Handler(ctx, b, req)
	}
	return &testpb.SimpleResponse{ServerId: b.ID, Hostname: b.Addr}, nil
}

// Stop stops the backend.
func (b *Backend) Stop() { b.srv.Stop() }

// Client is a gRPC-Go client dialing a service through the xDS resolver.
type Client struct {
	NodeID string
	Conn   *grpc.ClientConn
	Stub   testgrpc.TestServiceClient
}

// Dial writes a bootstrap with `bowline bootstrap grpc` for the given client
// service and dials xds:///<target>.
func Dial(t testing.TB, srv *Server, service, target string, extraBootstrapArgs ...string) *Client {
	t.Helper()
	nodeID := fmt.Sprintf("%s-%s-%d", service, strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano())
	args := append([]string{"bootstrap", "grpc", "--service", service, "--xds-addr", srv.XDSAddr, "--node-id", nodeID}, extraBootstrapArgs...)
	out, errOut, code := Run(t, args...)
	if code != 0 {
		t.Fatalf("bowline bootstrap grpc: exit %d: %s", code, errOut)
	}
	builder, err := xds.NewXDSResolverWithConfigForTesting([]byte(out))
	if err != nil {
		t.Fatalf("xds resolver from bootstrap: %v\n%s", err, out)
	}
	conn, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(builder), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial xds:///%s: %v", target, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Client{NodeID: nodeID, Conn: conn, Stub: testgrpc.NewTestServiceClient(conn)}
}

// Call makes one RPC and returns the ID of the backend that answered.
func (c *Client) Call(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := c.Stub.UnaryCall(ctx, &testpb.SimpleRequest{FillServerId: true})
	if err != nil {
		return "", err
	}
	return resp.GetServerId(), nil
}

// Spread makes n RPCs and counts answers per backend ID (errors under "error").
func (c *Client) Spread(ctx context.Context, n int) map[string]int {
	out := map[string]int{}
	for range n {
		id, err := c.Call(ctx)
		if err != nil {
			id = "error"
		}
		out[id]++
	}
	return out
}
