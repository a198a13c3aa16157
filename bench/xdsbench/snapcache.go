package xdsbench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/server"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// snapCacheServer is the library baseline: the same front half as Bowline
// (config directory, file registry, catalog), then what a go-control-plane
// user writes first: translate.Build for each connected proxy, one
// cachev3.Snapshot per proxy with one version number for every type,
// SetSnapshot on every catalog snapshot.
type snapCacheServer struct {
	c     serveConfig
	log   *slog.Logger
	store *config.Store
	cat   *discovery.Catalog
	cache cachev3.SnapshotCache
	xds   serverv3.Server

	mu      sync.Mutex
	in      translate.Input
	gen     int
	nodes   map[string]*scNode // by node id
	streams map[int64]string   // stream -> node id
}

type scNode struct {
	spec    translate.Proxy
	key     string
	streams int
}

func newSnapCacheServer(c serveConfig, log *slog.Logger) (*snapCacheServer, error) {
	if st, err := os.Stat(c.ConfigDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("config directory %s: not a readable directory", c.ConfigDir)
	}
	s := &snapCacheServer{
		c: c, log: log,
		store:   config.NewStore(log),
		cat:     discovery.NewCatalog(log, discovery.Options{}),
		nodes:   map[string]*scNode{},
		streams: map[int64]string{},
	}
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	s.xds = serverv3.NewServer(context.Background(), s.cache, serverv3.CallbackFuncs{
		StreamRequestFunc: func(id int64, req *discoverypb.DiscoveryRequest) error {
			return s.attach(id, req.GetNode())
		},
		StreamDeltaRequestFunc: func(id int64, req *discoverypb.DeltaDiscoveryRequest) error {
			return s.attach(id, req.GetNode())
		},
		StreamClosedFunc:      func(id int64, _ *core.Node) { s.detach(id) },
		DeltaStreamClosedFunc: func(id int64, _ *core.Node) { s.detach(id) },
	})
	return s, nil
}

func (s *snapCacheServer) services() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.in.Catalog == nil || s.in.Config == nil {
		return -1
	}
	return s.in.Catalog.Len()
}

// attach registers a stream's node on its first request and sets its
// snapshot before the cache answers.
func (s *snapCacheServer) attach(id int64, node *core.Node) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.streams[id]; ok {
		return nil
	}
	if node.GetId() == "" {
		return errors.New("the node has no id")
	}
	s.streams[id] = node.GetId()
	n, ok := s.nodes[node.GetId()]
	if !ok {
		spec, err := server.ProxyFromNode(node)
		if err != nil {
			return err
		}
		n = &scNode{spec: spec, key: specKey(spec)}
		s.nodes[node.GetId()] = n
		s.setLocked(node.GetId(), n, map[string]*translate.Resources{})
	}
	n.streams++
	return nil
}

func (s *snapCacheServer) detach(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	nodeID, ok := s.streams[id]
	if !ok {
		return
	}
	delete(s.streams, id)
	if n := s.nodes[nodeID]; n != nil {
		n.streams--
		if n.streams <= 0 {
			delete(s.nodes, nodeID)
			s.cache.ClearSnapshot(nodeID)
		}
	}
}

func specKey(p translate.Proxy) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%s|%d|%d|%t|%v|", p.Kind, p.Service, p.InboundPort, p.LocalPort, p.AllServices, p.Locality)
	for _, u := range p.Upstreams {
		fmt.Fprintf(&b, "%s:%d,", u.Service, u.LocalPort)
	}
	b.WriteString(strings.Join(p.Listeners, ","))
	return b.String()
}

// setLocked translates a node's configuration (or takes the one built for
// an equal node this round) and sets its snapshot.
func (s *snapCacheServer) setLocked(id string, n *scNode, shared map[string]*translate.Resources) {
	if s.in.Catalog == nil || s.in.Config == nil {
		return // the first catalog snapshot sets it
	}
	res, ok := shared[n.key]
	if !ok {
		var err error
		if res, err = translate.Build(s.in, n.spec); err != nil {
			s.log.Error("translate", "node", id, "err", err)
			return
		}
		shared[n.key] = res
	}
	snap, err := cachev3.NewSnapshot(strconv.Itoa(s.gen), map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: res.Listeners,
		resourcev3.RouteType:    res.Routes,
		resourcev3.ClusterType:  res.Clusters,
		resourcev3.EndpointType: res.Endpoints,
		resourcev3.SecretType:   res.Secrets,
	})
	if err == nil {
		err = s.cache.SetSnapshot(context.Background(), id, snap)
	}
	if err != nil {
		s.log.Error("set snapshot", "node", id, "err", err)
	}
}

func (s *snapCacheServer) Run(ctx context.Context) error {
	lis, err := net.Listen("tcp", s.c.XDSAddr)
	if err != nil {
		return fmt.Errorf("xds: listen: %w", err)
	}
	g := grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	discoverypb.RegisterAggregatedDiscoveryServiceServer(g, s.xds)

	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		return s.store.Run(ctx, &config.DirSource{Dir: s.c.ConfigDir, Log: s.log})
	})
	eg.Go(func() error { return s.cat.Run(ctx, file.New(s.store)) })
	eg.Go(func() error { return s.follow(ctx) })
	eg.Go(func() error {
		if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return err
		}
		return nil
	})
	eg.Go(func() error {
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() { g.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			g.Stop()
		}
		return nil
	})
	return eg.Wait()
}

// follow sets every connected node's snapshot on each catalog snapshot or
// configuration.
func (s *snapCacheServer) follow(ctx context.Context) error {
	snaps, cancelSnaps := s.cat.Subscribe()
	defer cancelSnaps()
	cfgs, cancelCfgs := s.store.Subscribe()
	defer cancelCfgs()
	for {
		select {
		case <-ctx.Done():
			return nil
		case snap := <-snaps:
			s.apply(func() { s.in.Catalog = snap })
		case cfg := <-cfgs:
			s.apply(func() { s.in.Config = cfg })
		}
	}
}

func (s *snapCacheServer) apply(set func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set()
	s.gen++
	shared := map[string]*translate.Resources{}
	for id, n := range s.nodes {
		s.setLocked(id, n, shared)
	}
}
