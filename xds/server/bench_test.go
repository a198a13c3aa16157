package server_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/test/adsclient"
	"github.com/bowlinemesh/bowline/xds/server"
)

// These benchmarks go through the server's exported API only, so that they
// survive rewrites of its internals: a catalog snapshot goes in, and an op
// ends when a simulated Envoy (test/adsclient, Light mode, over an in-memory
// gRPC connection) has applied and ACKed the result. They measure building,
// versioning and serving one proxy's configuration; the allocations include
// the client's (decoding the responses), which are small next to the
// server's. bench/ measures thousands of proxies.

type snapFeed chan *discovery.Snapshot

func (f snapFeed) Subscribe() (<-chan *discovery.Snapshot, func()) { return f, func() {} }

type cfgFeed chan *config.Config

func (f cfgFeed) Subscribe() (<-chan *config.Config, func()) { return f, func() {} }

// benchCatalog is S tcp services of E endpoints; the last endpoint of
// service k listens on 30000 + gens[k].
func benchCatalog(prev *discovery.Snapshot, gens []int, e int) *discovery.Snapshot {
	svcs := make([]*discovery.Service, len(gens))
	for k, g := range gens {
		svc := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: fmt.Sprintf("svc-%04d", k)}, Protocol: discovery.ProtocolTCP}
		for j := range e {
			port := uint32(8080)
			if j == e-1 {
				port = uint32(30000 + g)
			}
			svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Address: fmt.Sprintf("10.%d.%d.%d", k/256, k%256, j+1), Port: port})
		}
		svcs[k] = svc
	}
	return discovery.NewSnapshot(prev, svcs)
}

type benchServer struct {
	srv   *server.Server
	snaps snapFeed
	snap  *discovery.Snapshot
	gens  []int
	e     int
	lis   *bufconn.Listener
}

func newBenchServer(b *testing.B, s, e int) *benchServer {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	bs := &benchServer{
		srv:   server.New(slog.New(slog.DiscardHandler), server.Options{Debounce: time.Microsecond}),
		snaps: make(snapFeed, 1),
		gens:  make([]int, s),
		e:     e,
		lis:   bufconn.Listen(1 << 20),
	}
	cfgs := make(cfgFeed, 1)
	cfgs <- &config.Config{Mesh: config.Mesh{TrustDomain: config.DefaultTrustDomain}}
	bs.snap = benchCatalog(nil, bs.gens, e)
	bs.snaps <- bs.snap
	g := grpc.NewServer()
	bs.srv.Register(g)
	go func() { _ = g.Serve(bs.lis) }()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = bs.srv.Run(ctx, bs.snaps, cfgs)
	}()
	b.Cleanup(func() {
		cancel()
		g.Stop()
		<-done
	})
	<-bs.srv.Ready()
	return bs
}

// change bumps the generation of services ks and publishes the catalog.
func (bs *benchServer) change(ks []int) {
	for _, k := range ks {
		bs.gens[k]++
	}
	bs.snap = benchCatalog(bs.snap, bs.gens, bs.e)
	bs.snaps <- bs.snap
}

func sidecarAllServices(b *testing.B, id string) *core.Node {
	md, err := structpb.NewStruct(map[string]any{
		server.MetaKind: "envoy", server.MetaService: "svc-0001", server.MetaInboundPort: "21000",
		server.MetaLocalPort: "8080", server.MetaAllServices: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	return &core.Node{Id: id, Cluster: "svc-0001", Metadata: md}
}

// connect starts a simulated Envoy and returns a channel that receives the
// number of ClusterLoadAssignments each applied EDS response changed, after
// waiting for the first s of them.
func (bs *benchServer) connect(b *testing.B, ctx context.Context, id string, delta bool, s int) <-chan int {
	b.Helper()
	eds := make(chan int, 1024)
	bs.connectTo(b, ctx, id, delta, eds)
	waitEDS(b, ctx, eds, s)
	return eds
}

// loopChanges runs the benchmark's ops: a change to one service (in turn)
// or to every service, until each of the proxies reporting on eds has
// applied it.
func (bs *benchServer) loopChanges(b *testing.B, ctx context.Context, eds <-chan int, every bool, proxies int) {
	s := len(bs.gens)
	all := make([]int, s)
	for k := range all {
		all[k] = k
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if every {
			bs.change(all)
			waitEDS(b, ctx, eds, proxies*s)
		} else {
			bs.change([]int{i % s})
			waitEDS(b, ctx, eds, proxies)
		}
	}
}

// waitEDS waits until n ClusterLoadAssignments have changed.
func waitEDS(b *testing.B, ctx context.Context, eds <-chan int, n int) {
	for n > 0 {
		select {
		case got := <-eds:
			n -= got
		case <-ctx.Done():
			b.Fatal("timed out waiting for endpoints")
		case <-time.After(time.Minute):
			b.Fatal("timed out waiting for endpoints")
		}
	}
}

func protocols() []struct {
	name  string
	delta bool
} {
	return []struct {
		name  string
		delta bool
	}{{"sotw", false}, {"delta", true}}
}

// BenchmarkPush: one connected sidecar that receives every service; an op is
// a change to one service's endpoints (or to every service's), from the
// catalog snapshot reaching the server to the proxy's ACK.
func BenchmarkPush(b *testing.B) {
	const s, e = 1000, 10
	for _, p := range protocols() {
		for _, every := range []bool{false, true} {
			name := "one-service"
			if every {
				name = "every-service"
			}
			b.Run(fmt.Sprintf("%s/%s/S=%d/E=%d", name, p.name, s, e), func(b *testing.B) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				bs := newBenchServer(b, s, e)
				eds := bs.connect(b, ctx, "bench-1", p.delta, s)
				bs.loopChanges(b, ctx, eds, every, 1)
			})
		}
	}
}

// BenchmarkConnect: an op is a new proxy (a sidecar that receives every
// service) connecting and receiving its whole configuration.
func BenchmarkConnect(b *testing.B) {
	const s, e = 1000, 10
	for _, p := range protocols() {
		b.Run(fmt.Sprintf("%s/S=%d/E=%d", p.name, s, e), func(b *testing.B) {
			bs := newBenchServer(b, s, e)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				ctx, cancel := context.WithCancel(context.Background())
				bs.connect(b, ctx, fmt.Sprintf("bench-%d", i), p.delta, s)
				cancel()
				i++
			}
		})
	}
}

// BenchmarkFanOut: N connected sidecars that receive every service (and so
// share one outbound part); an op is a change to one service's endpoints (or
// to every service's) until every proxy has applied and ACKed it. The
// clients' work (in-memory connections, Light decoding) is included; the
// harness under bench/ measures the same over TCP with the server in a
// process of its own.
func BenchmarkFanOut(b *testing.B) {
	const n, s, e = 1000, 1000, 10
	for _, p := range protocols() {
		for _, every := range []bool{false, true} {
			name := "one-service"
			if every {
				name = "every-service"
			}
			b.Run(fmt.Sprintf("%s/%s/N=%d/S=%d/E=%d", name, p.name, n, s, e), func(b *testing.B) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				bs := newBenchServer(b, s, e)
				eds := make(chan int, 4*n)
				for i := range n {
					bs.connectTo(b, ctx, fmt.Sprintf("fan-%d", i), p.delta, eds)
				}
				waitEDS(b, ctx, eds, n*s)
				bs.loopChanges(b, ctx, eds, every, n)
			})
		}
	}
}

// connectTo starts a simulated Envoy that reports, on eds, the number of
// ClusterLoadAssignments each applied EDS response changed.
func (bs *benchServer) connectTo(b *testing.B, ctx context.Context, id string, delta bool, eds chan<- int) {
	b.Helper()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return bs.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		b.Fatal(err)
	}
	c := adsclient.New(adsclient.Options{Node: sidecarAllServices(b, id), Delta: delta, Light: true, OnApplied: func(a adsclient.Applied) {
		if a.TypeURL == resourcev3.EndpointType && len(a.Changed) > 0 {
			eds <- len(a.Changed)
		}
	}})
	go func() {
		_ = c.Run(ctx, conn)
		conn.Close()
	}()
}
