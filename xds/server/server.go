// Package server serves the translated configuration over xDS (ADS, both
// state-of-the-world and delta) with go-control-plane. It follows the catalog
// and the configuration, tracks every connected proxy (the versions it ACKed
// per type, its last NACK), builds each proxy's resources with package
// translate, checks them and hands them to the snapshot cache only when their
// content changed. Proxies that would receive the same configuration share
// one translation.
package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// CatalogFeed publishes catalog snapshots (discovery.Catalog does).
type CatalogFeed interface {
	Subscribe() (<-chan *discovery.Snapshot, func())
}

// ConfigFeed publishes configurations (config.Store does).
type ConfigFeed interface {
	Subscribe() (<-chan *config.Config, func())
}

// Options tune a Server.
type Options struct {
	// Debounce is how long the server gathers changes before rebuilding
	// (default 10ms).
	Debounce time.Duration
	// Registerer receives the server's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Check runs translate.Check on every configuration before it is served
	// (tests turn it on; a failing check keeps the previous configuration).
	Check bool
}

// Server is the xDS server.
type Server struct {
	log      *slog.Logger
	opts     Options
	cache    cachev3.SnapshotCache
	xds      serverv3.Server
	metrics  *metrics
	ready    chan struct{}
	readyOne sync.Once

	mu      sync.Mutex
	in      translate.Input
	proxies map[string]*proxy
	streams map[int64]*stream
}

type stream struct {
	nodeID string
	delta  bool
	// sent maps a delta response nonce to the version it carried.
	sent map[string]string
}

// typeNames maps xDS type URLs to the short names used in the admin API.
var typeNames = map[string]string{
	resourcev3.ListenerType: "listeners",
	resourcev3.RouteType:    "routes",
	resourcev3.ClusterType:  "clusters",
	resourcev3.EndpointType: "endpoints",
	resourcev3.SecretType:   "secrets",
}

// New returns a server; call Register to attach it to a gRPC server and Run
// to follow the catalog and configuration.
func New(log *slog.Logger, opts Options) *Server {
	if opts.Debounce <= 0 {
		opts.Debounce = 10 * time.Millisecond
	}
	s := &Server{
		log:     log,
		opts:    opts,
		metrics: newMetrics(opts.Registerer),
		ready:   make(chan struct{}),
		proxies: map[string]*proxy{},
		streams: map[int64]*stream{},
	}
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger{log})
	s.xds = serverv3.NewServer(context.Background(), s.cache, (*callbacks)(s))
	return s
}

// Register serves ADS (state-of-the-world and delta) on g.
func (s *Server) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
}

// Ready is closed once the server has both a catalog snapshot and a
// configuration.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run follows the catalog and the configuration until ctx is cancelled,
// rebuilding the configuration of the proxies each change affects.
func (s *Server) Run(ctx context.Context, catalog CatalogFeed, cfg ConfigFeed) error {
	snaps, cancelSnaps := catalog.Subscribe()
	defer cancelSnaps()
	cfgs, cancelCfgs := cfg.Subscribe()
	defer cancelCfgs()

	var (
		pendingSnap *discovery.Snapshot
		pendingCfg  *config.Config
		changed     = map[discovery.ServiceKey]struct{}{}
		all         bool
		since       time.Time
		timer       *time.Timer
		fire        <-chan time.Time
	)
	arm := func() {
		if timer == nil {
			since = time.Now()
			timer = time.NewTimer(s.opts.Debounce)
			fire = timer.C
		}
	}
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case snap := <-snaps:
			pendingSnap = snap
			if snap.Changed == nil {
				all = true
			}
			for k := range snap.Changed {
				changed[k] = struct{}{}
			}
			arm()
		case c := <-cfgs:
			pendingCfg = c
			all = true
			arm()
		case <-fire:
			timer, fire = nil, nil
			s.apply(pendingSnap, pendingCfg, changed, all, since)
			pendingSnap, pendingCfg, all = nil, nil, false
			changed = map[discovery.ServiceKey]struct{}{}
		}
	}
}

// apply installs new inputs and rebuilds the affected proxies.
func (s *Server) apply(snap *discovery.Snapshot, cfg *config.Config, changed map[discovery.ServiceKey]struct{}, all bool, since time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if snap != nil {
		s.in.Catalog = snap
	}
	if cfg != nil {
		s.in.Config = cfg
	}
	if s.in.Catalog != nil && s.in.Config != nil {
		s.readyOne.Do(func() { close(s.ready) })
	}
	shared := map[string]*built{}
	for _, id := range slices.Sorted(maps.Keys(s.proxies)) {
		p := s.proxies[id]
		if !all && !p.affectedBy(changed) {
			continue
		}
		s.rebuildLocked(p, shared, since)
	}
}

// built is one translation, shared by the proxies with the same key.
type built struct {
	res      *translate.Resources
	versions map[string]string
	services map[discovery.ServiceKey]struct{}
	err      error
}

func (s *Server) build(p *proxy, shared map[string]*built) *built {
	key := p.key()
	if b, ok := shared[key]; ok {
		return b
	}
	in := s.in
	if in.Catalog == nil {
		in.Catalog = discovery.NewSnapshot(nil, nil)
	}
	if in.Config == nil {
		in.Config = &config.Config{Mesh: config.Mesh{TrustDomain: config.DefaultTrustDomain}}
	}
	b := &built{}
	b.res, b.err = translate.Build(in, p.spec)
	s.metrics.builds.Inc()
	if b.err == nil && s.opts.Check {
		b.err = translate.Check(b.res)
	}
	if b.err == nil {
		b.versions = versions(b.res)
		b.services = map[discovery.ServiceKey]struct{}{}
		for _, k := range b.res.Services {
			b.services[k] = struct{}{}
		}
	}
	shared[key] = b
	return b
}

// rebuildLocked translates p's configuration and, when its content changed,
// hands it to the cache.
func (s *Server) rebuildLocked(p *proxy, shared map[string]*built, since time.Time) {
	b := s.build(p, shared)
	if b.err != nil {
		s.metrics.buildErrors.Inc()
		s.log.Error("xds: translation failed; the proxy keeps its previous configuration", "proxy", p.id, "err", b.err)
		p.buildErr = b.err.Error()
		return
	}
	p.buildErr = ""
	p.services = b.services
	if maps.Equal(p.versions, b.versions) {
		return
	}
	snap := &cachev3.Snapshot{}
	snap.Resources[types.Listener] = cachev3.NewResources(b.versions[resourcev3.ListenerType], b.res.Listeners)
	snap.Resources[types.Route] = cachev3.NewResources(b.versions[resourcev3.RouteType], b.res.Routes)
	snap.Resources[types.Cluster] = cachev3.NewResources(b.versions[resourcev3.ClusterType], b.res.Clusters)
	snap.Resources[types.Endpoint] = cachev3.NewResources(b.versions[resourcev3.EndpointType], b.res.Endpoints)
	snap.Resources[types.Secret] = cachev3.NewResources(b.versions[resourcev3.SecretType], b.res.Secrets)
	if err := s.cache.SetSnapshot(context.Background(), p.id, snap); err != nil {
		s.metrics.buildErrors.Inc()
		s.log.Error("xds: set snapshot", "proxy", p.id, "err", err)
		return
	}
	for t, v := range b.versions {
		if p.versions[t] != v {
			s.metrics.pushes.WithLabelValues(typeNames[t]).Inc()
			p.pending[t] = pendingPush{version: v, since: since}
		}
	}
	p.versions = b.versions
	p.res = b.res
}

// versions hashes each type's resources (deterministic marshalling), so that
// equal configurations get equal versions in every replica.
func versions(r *translate.Resources) map[string]string {
	out := map[string]string{}
	for t, list := range map[string][]types.Resource{
		resourcev3.ListenerType: r.Listeners, resourcev3.RouteType: r.Routes, resourcev3.ClusterType: r.Clusters,
		resourcev3.EndpointType: r.Endpoints, resourcev3.SecretType: r.Secrets,
	} {
		h := sha256.New()
		for _, res := range list {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(res)
			if err != nil {
				panic("xds: marshal " + translate.ResourceName(res) + ": " + err.Error())
			}
			h.Write([]byte(translate.ResourceName(res)))
			h.Write([]byte{0})
			h.Write(b)
		}
		out[t] = hex.EncodeToString(h.Sum(nil)[:8])
	}
	return out
}

// Proxies reports every connected proxy, ordered by id.
func (s *Server) Proxies() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for _, id := range slices.Sorted(maps.Keys(s.proxies)) {
		out = append(out, s.proxies[id].status())
	}
	return out
}

// Proxy reports one connected proxy.
func (s *Server) Proxy(id string) (ProxyStatus, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.proxies[id]
	if !ok {
		return ProxyStatus{}, false
	}
	return p.status(), true
}

// ProxyResources returns the resources a connected proxy is being served.
func (s *Server) ProxyResources(id string) (*translate.Resources, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.proxies[id]
	if !ok || p.res == nil {
		return nil, false
	}
	return p.res, true
}

// Input returns the catalog snapshot and configuration in use.
func (s *Server) Input() translate.Input {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.in
}

// cacheLogger adapts slog to go-control-plane's logger.
type cacheLogger struct{ l *slog.Logger }

func (c cacheLogger) Debugf(format string, args ...any) {}
func (c cacheLogger) Infof(format string, args ...any)  {}
func (c cacheLogger) Warnf(format string, args ...any) {
	c.l.Debug("xds cache: " + strings.TrimSpace(fmt.Sprintf(format, args...)))
}
func (c cacheLogger) Errorf(format string, args ...any) {
	c.l.Error("xds cache: " + strings.TrimSpace(fmt.Sprintf(format, args...)))
}
