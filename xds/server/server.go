// Package server serves the translated configuration over xDS: ADS, both
// state-of-the-world and delta, on go-control-plane's types. It follows the
// catalog and the configuration, tracks every connected proxy (the versions
// it ACKed per type, its last NACK), builds each proxy's resources with
// package translate, checks them and wakes the proxy's streams only when
// their content changed. Proxies that would receive the same configuration
// share one translation, and their streams one encoded response.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

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
	// Debounce is the least time between two rebuilds (default 10ms): a
	// change after a quiet period is applied at once, and the changes that
	// follow within Debounce are gathered into the next rebuild.
	Debounce time.Duration
	// Registerer receives the server's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Check runs translate.Check on every configuration before it is served
	// (tests turn it on; a failing check keeps the previous configuration).
	Check bool
	// Identity, when set, issues the certificates of proven sidecars over
	// SDS and supplies the trust bundle (identity.go).
	Identity Identity
}

// Server is the xDS server.
type Server struct {
	log      *slog.Logger
	opts     Options
	marshal  *marshaller
	bodies   *bodies
	names    *interner
	memo     *translate.Memo
	memoSize int
	metrics  *metrics
	ready    chan struct{}
	readyOne sync.Once

	mu      sync.Mutex
	in      translate.Input
	proxies map[string]*proxy
	streams map[int64]*adsStream
	// nextStream numbers streams.
	nextStream int64
	ident      identityState
	// parts are the translations built from the current input (catalog,
	// configuration, trust bundle), by sharing key: a proxy that connects
	// takes the parts others already use instead of translating them again.
	// A new input starts a new map.
	parts map[string]*built
}

// partsLocked returns the translations of the current input. s.mu must be
// held.
func (s *Server) partsLocked() map[string]*built {
	if s.parts == nil {
		s.parts = map[string]*built{}
	}
	return s.parts
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
		streams: map[int64]*adsStream{},
		marshal: newMarshaller(),
		bodies:  newBodies(),
		names:   newInterner(),
		memo:    translate.NewMemo(),
	}
	s.initIdentity()
	return s
}

// Register serves ADS (state-of-the-world and delta) on g.
func (s *Server) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, (*ads)(s))
}

// Ready is closed once the server has both a catalog snapshot and a
// configuration.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run follows the catalog and the configuration until ctx is cancelled,
// rebuilding the configuration of the proxies each change affects.
func (s *Server) Run(ctx context.Context, catalog CatalogFeed, cfg ConfigFeed) error {
	defer s.startIdentity(ctx)() // certificate renewal (identity.go)
	snaps, cancelSnaps := catalog.Subscribe()
	defer cancelSnaps()
	cfgs, cancelCfgs := cfg.Subscribe()
	defer cancelCfgs()

	var (
		pendingSnap *discovery.Snapshot
		pendingCfg  *config.Config
		// rulesVersion is the latest configuration's RulesVersion.
		rulesVersion string
		changed      = map[discovery.ServiceKey]struct{}{}
		all          bool
		since        time.Time
		timer        *time.Timer
		fire         <-chan time.Time
		applied      time.Time
		// lazy: the timer waits for the catalog (see cfgs below).
		lazy bool
	)
	arm := func() {
		if timer == nil {
			since = time.Now()
			timer = time.NewTimer(max(0, s.opts.Debounce-since.Sub(applied)))
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
			if lazy {
				// The catalog brings what the configuration waited for.
				timer.Stop()
				timer, fire, lazy = nil, nil, false
			}
			arm()
		case c := <-cfgs:
			pendingCfg = c
			// A change to the file registry's services alone reaches the
			// proxies it concerns through the catalog: the configuration
			// waits for the catalog's snapshot (or the debounce), so that
			// the snapshot, which follows within a millisecond, is not the
			// change held back by a rebuild that changed nothing. Anything
			// else in the configuration may concern every proxy.
			if c.RulesVersion == "" || c.RulesVersion != rulesVersion {
				all = true
				if lazy {
					timer.Stop()
					timer, fire, lazy = nil, nil, false
				}
				arm()
			} else if timer == nil {
				since = time.Now()
				timer = time.NewTimer(s.opts.Debounce)
				fire, lazy = timer.C, true
			}
			rulesVersion = c.RulesVersion
		case <-fire:
			timer, fire, lazy = nil, nil, false
			s.apply(pendingSnap, pendingCfg, changed, all, since)
			applied = time.Now()
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
	s.parts = shared
	s.bodies.reset()
	for _, id := range slices.Sorted(maps.Keys(s.proxies)) {
		p := s.proxies[id]
		if !all && !p.affectedBy(changed) {
			continue
		}
		s.rebuildLocked(p, shared, since)
	}
	// Forget translations and marshalled resources nobody used this round,
	// when every proxy was rebuilt or the memo has grown by half.
	if n := s.memo.Len(); all || n > s.memoSize*3/2+64 {
		s.memo.Sweep()
		s.marshal.sweep()
		s.memoSize = s.memo.Len()
	}
}

// built is one translation, shared by the proxies with the same key.
type built struct {
	res      *translate.Resources
	parts    [2]*built // outbound and inbound, when composed (res is then nil)
	own      map[discovery.ServiceKey]struct{}
	sets     map[string]*typeSet
	versions map[string]string
	services map[discovery.ServiceKey]struct{}
	err      error
}

// build translates a proxy's configuration. A sidecar's is made of two
// parts: the outbound part (what it calls), shared by every proxy with the
// same upstreams, and the inbound part (its own workload). Each part is built
// once per round for all the proxies that share it.
func (s *Server) build(p *proxy, shared map[string]*built) *built {
	key := "proxy|" + specKey(p.spec)
	if b, ok := shared[key]; ok {
		return b
	}
	var b *built
	if p.spec.Kind == translate.KindSidecar && p.spec.Part == translate.PartAll {
		b = compose(s.buildPart(outboundSpec(p.spec, s.in.Catalog), shared), s.buildPart(inboundSpec(p.spec), shared))
		if b.err == nil && s.opts.Check {
			b.err = translate.Check(b.resources())
		}
	} else {
		b = s.buildPart(p.spec, shared)
		if b.err == nil && s.opts.Check {
			b.err = translate.Check(b.res)
		}
	}
	shared[key] = b
	return b
}

// buildPart translates one part (or the whole) of a configuration.
func (s *Server) buildPart(spec translate.Proxy, shared map[string]*built) *built {
	key := "part|" + specKey(spec)
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
	in.Memo = s.memo
	b := &built{}
	b.res, b.err = translate.Build(in, spec)
	s.metrics.builds.Inc()
	if b.err == nil {
		b.sets, b.err = s.typeSets(b.res)
	}
	if b.err == nil {
		b.versions = map[string]string{}
		for t, ts := range b.sets {
			b.versions[t] = ts.version
		}
		b.services = map[discovery.ServiceKey]struct{}{}
		for _, k := range b.res.Services {
			b.services[k] = struct{}{}
		}
	}
	shared[key] = b
	return b
}

// compose joins the outbound and inbound parts of a sidecar's
// configuration. It costs a few pointers per type: the parts' resources are
// shared, and the joined Resources are only assembled when asked for
// (resources).
func compose(out, in *built) *built {
	if out.err != nil {
		return out
	}
	if in.err != nil {
		return in
	}
	b := &built{parts: [2]*built{out, in}, sets: map[string]*typeSet{}, versions: map[string]string{}, services: out.services, own: in.services}
	for t, ts := range out.sets {
		b.sets[t] = layer(ts, in.sets[t])
		b.versions[t] = b.sets[t].version
	}
	return b
}

// resources returns the translated resources (joining parts if need be).
func (b *built) resources() *translate.Resources {
	if b.res != nil || b.parts[0] == nil {
		return b.res
	}
	out, in := b.parts[0].res, b.parts[1].res
	r := &translate.Resources{
		Listeners: mergeByName(out.Listeners, in.Listeners),
		Routes:    mergeByName(out.Routes, in.Routes),
		Clusters:  mergeByName(out.Clusters, in.Clusters),
		Endpoints: mergeByName(out.Endpoints, in.Endpoints),
		Secrets:   mergeByName(out.Secrets, in.Secrets),
	}
	seen := map[discovery.ServiceKey]bool{}
	for _, k := range append(slices.Clone(out.Services), in.Services...) {
		if !seen[k] {
			seen[k] = true
			r.Services = append(r.Services, k)
		}
	}
	slices.SortFunc(r.Services, discovery.ServiceKey.Compare)
	return r
}

func mergeByName(a, b []types.Resource) []types.Resource {
	if len(b) == 0 {
		return a
	}
	out := append(slices.Clone(a), b...)
	slices.SortStableFunc(out, func(x, y types.Resource) int {
		return strings.Compare(translate.ResourceName(x), translate.ResourceName(y))
	})
	return out
}

// outboundSpec is the part of a sidecar's configuration that does not depend
// on its own workload: the upstreams (declared by its service in the catalog
// and by its bootstrap), resolved here so that the part can be shared.
func outboundSpec(p translate.Proxy, catalog *discovery.Snapshot) translate.Proxy {
	o := p
	o.Part = translate.PartOutbound
	o.InboundPort, o.LocalPort = 0, 0
	var ups []discovery.Upstream
	if svc, ok := catalog.Service(p.Service); ok {
		ups = append(ups, svc.Upstreams...)
	}
	ups = append(ups, p.Upstreams...)
	slices.SortFunc(ups, func(a, b discovery.Upstream) int {
		if c := a.Service.Compare(b.Service); c != 0 {
			return c
		}
		return int(a.LocalPort) - int(b.LocalPort)
	})
	o.Upstreams = slices.Compact(ups)
	o.Service = discovery.ServiceKey{Namespace: p.Service.Namespace}
	if t := p.TLS; t != nil && len(t.CertChain) > 0 {
		// Only whether the sidecar has an identity shapes the outbound part
		// (its clusters name the secrets); the certificate itself is in the
		// inbound part, so sidecars of different services share this one.
		o.TLS = &translate.ProxyTLS{SPIFFEID: "present"}
	}
	return o
}

// inboundSpec is the part of a sidecar's configuration about its own workload.
func inboundSpec(p translate.Proxy) translate.Proxy {
	i := p
	i.Part = translate.PartInbound
	i.Upstreams, i.Listeners, i.AllServices = nil, nil, false
	return i
}

// typeSets turns resources into marshalled entries per type.
func (s *Server) typeSets(r *translate.Resources) (map[string]*typeSet, error) {
	sets := map[string]*typeSet{}
	for t, list := range map[string][]types.Resource{
		resourcev3.ListenerType: r.Listeners, resourcev3.RouteType: r.Routes, resourcev3.ClusterType: r.Clusters,
		resourcev3.EndpointType: r.Endpoints, resourcev3.SecretType: r.Secrets,
	} {
		entries := make([]*entry, 0, len(list))
		for _, res := range list {
			e, err := s.marshal.entry(t, res, translate.ResourceName(res))
			if err != nil {
				return nil, fmt.Errorf("xds: marshal %s: %w", translate.ResourceName(res), err)
			}
			entries = append(entries, e)
		}
		sets[t] = newTypeSet(entries)
	}
	return sets, nil
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
	p.services, p.own = b.services, b.own
	if maps.Equal(p.versions, b.versions) {
		return
	}
	for t, v := range b.versions {
		if p.versions[t] != v {
			s.metrics.pushes.WithLabelValues(typeNames[t]).Inc()
			p.pending[t] = pendingPush{version: v, since: since}
		}
	}
	p.versions = b.versions
	p.built = b
	for _, st := range p.streamSet {
		st.poke()
	}
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
	if !ok || p.built == nil {
		return nil, false
	}
	return p.built.resources(), true
}

// Input returns the catalog snapshot and configuration in use.
func (s *Server) Input() translate.Input {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.in
}
