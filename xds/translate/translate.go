// Package translate turns a catalog snapshot and the configuration in force
// into the Envoy resources of one proxy. It is made of pure functions: no I/O,
// no clocks, and deterministic output (stable names, sorted resources), so its
// results can be compared with golden files and shared between proxies that
// would receive the same configuration.
//
// Two kinds of client are served: Envoy sidecars (an inbound listener in front
// of the local application, outbound listeners on the local ports of the
// upstreams the workload declares) and proxyless gRPC (API listeners named
// after the dial targets xds:///<service> and xds:///<service>.<namespace>).
//
// One file per xDS type: listeners.go, routes.go, clusters.go, endpoints.go,
// secrets.go; filters.go holds the HTTP filter chain with its places for later
// filters; tls.go applies mutual TLS and grpcserver.go answers xDS-enabled
// gRPC servers.
package translate

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// Kind is the kind of xDS client.
type Kind string

// The kinds of proxy Bowline programs.
const (
	KindSidecar Kind = "envoy"
	KindGRPC    Kind = "grpc"
)

// Proxy describes one connected client, as far as translation cares.
type Proxy struct {
	Kind Kind
	// Service is the workload the proxy fronts (sidecars) or runs in (gRPC).
	Service discovery.ServiceKey
	// InboundPort and LocalPort override the sidecar's inbound listener port
	// and the local application's port; zero means "from the catalog".
	InboundPort uint32
	LocalPort   uint32
	// Upstreams adds upstreams to those the service declares in the catalog.
	Upstreams []discovery.Upstream
	// Locality is where the proxy runs (for locality failover).
	Locality discovery.Locality
	// AllServices makes the proxy receive every service of the mesh.
	AllServices bool
	// Listeners are the listener names a gRPC client asked for (its dial
	// targets).
	Listeners []string
	// Part selects part of a sidecar's configuration, so that the bulk of it
	// (outbound) can be shared by proxies that differ only in their own
	// service (inbound). The zero value builds everything.
	Part Part
	// TLS is the proxy's identity material (tls.go); nil when it has none.
	TLS *ProxyTLS
}

// Part is a part of a proxy's configuration.
type Part int

// The parts of a configuration.
const (
	// PartAll is the whole configuration.
	PartAll Part = iota
	// PartInbound is what depends on the proxy's own workload: a sidecar's
	// inbound listener, its local app cluster and its own secrets.
	PartInbound
	// PartOutbound is everything else: what the proxy calls.
	PartOutbound
)

// Input is everything translation reads.
type Input struct {
	Catalog *discovery.Snapshot
	Config  *config.Config
	// Memo, when set, shares per-service resources between builds.
	Memo *Memo
	// TrustBundle is the mesh CA's trust bundle (PEM), served to sidecars.
	TrustBundle []byte
}

// Resources is the translated configuration of one proxy, each list sorted by
// resource name.
type Resources struct {
	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
	Endpoints []types.Resource
	Secrets   []types.Resource
	// Services lists the services the resources depend on, sorted.
	Services []discovery.ServiceKey
}

// Resource names. They are stable and readable: they show in Envoy's stats
// and admin pages.
const (
	localAppCluster = "local_app"
	inboundListener = "inbound"
)

// ClusterName names the cluster (and its EDS resource) of a service.
func ClusterName(k discovery.ServiceKey) string { return k.Namespace + "/" + k.Name }

// SubsetClusterName names the cluster of one subset of a service.
func SubsetClusterName(k discovery.ServiceKey, subset string) string {
	return k.Namespace + "/" + k.Name + "/" + subset
}

// RouteName names the route configuration for calls to a service.
func RouteName(k discovery.ServiceKey) string { return k.Namespace + "/" + k.Name }

// OutboundListenerName names a sidecar's outbound listener for an upstream.
func OutboundListenerName(u discovery.Upstream) string {
	return fmt.Sprintf("outbound|%d|%s", u.LocalPort, ClusterName(u.Service))
}

// Build translates the input into the resources of one proxy.
func Build(in Input, p Proxy) (*Resources, error) {
	b := &builder{in: in, p: p, services: map[discovery.ServiceKey]*discovery.Service{}, routes: map[discovery.ServiceKey]*discovery.Service{}, clusters: map[string]clusterRef{}, deps: map[discovery.ServiceKey]bool{}}
	switch p.Kind {
	case KindSidecar:
		if err := b.sidecar(); err != nil {
			return nil, err
		}
	case KindGRPC:
		b.proxyless()
	default:
		return nil, fmt.Errorf("translate: unknown proxy kind %q", p.Kind)
	}
	// Route configurations first: their rules may send traffic to other
	// services, whose clusters are then needed too.
	for _, k := range sortedKeys(b.routes) {
		b.res.Routes = append(b.res.Routes, b.memoRouteConfig(b.routes[k]))
	}
	// Only the clusters something refers to: proxyless gRPC asks for exactly
	// those, and the ADS cache answers only when the two sets agree.
	for _, name := range slices.Sorted(maps.Keys(b.clusters)) {
		c := b.clusters[name]
		svc := b.services[c.service]
		b.res.Clusters = append(b.res.Clusters, b.memoCluster(name, svc, c))
		b.res.Endpoints = append(b.res.Endpoints, b.memoLoadAssignment(name, svc, c))
	}
	for _, k := range sortedKeys(b.services) {
		b.res.Services = append(b.res.Services, k)
	}
	b.authorize()         // RBAC, ext_authz (authz.go)
	b.rateLimit()         // local and global rate limits (ratelimit.go)
	b.telemetryClusters() // policyd and OTLP collector clusters (accesslog.go)
	b.secure()            // mutual TLS and SDS secrets (tls.go)
	sortByName(b.res.Listeners)
	sortByName(b.res.Routes)
	sortByName(b.res.Clusters)
	sortByName(b.res.Endpoints)
	sortByName(b.res.Secrets)
	for k := range b.deps {
		if _, used := b.services[k]; !used {
			b.res.Services = append(b.res.Services, k)
		}
	}
	slices.SortFunc(b.res.Services, discovery.ServiceKey.Compare)
	return &b.res, nil
}

type builder struct {
	in       Input
	p        Proxy
	res      Resources
	services map[discovery.ServiceKey]*discovery.Service
	// recorder, while set, records useCluster calls (see memoRouteConfig).
	recorder *recorder
	// clusters are the clusters that listeners and routes refer to.
	clusters map[string]clusterRef
	// routes are the services whose route configuration a listener names.
	routes map[discovery.ServiceKey]*discovery.Service
	// deps are services the output depends on without using them (a dial
	// target "name.namespace" that resolves elsewhere until the service
	// appears).
	deps map[discovery.ServiceKey]bool
	// tel is the sidecar's telemetry, built on first use (accesslog.go).
	tel *sidecarTelemetry
}

// use records that the proxy needs a service's cluster, endpoints and routes.
// Unknown services get an empty cluster so that listeners stay valid and the
// proxy starts sending traffic as soon as the service appears.
func (b *builder) use(k discovery.ServiceKey) *discovery.Service {
	if svc, ok := b.services[k]; ok {
		return svc
	}
	svc := b.lookup(k)
	b.services[k] = svc
	return svc
}

// clusterRef is what a cluster serves: a service, or one subset of it.
type clusterRef struct {
	service discovery.ServiceKey
	subset  string
}

// useCluster records that something refers to the cluster of a service (or
// of one of its subsets) and returns its name.
func (b *builder) useCluster(k discovery.ServiceKey, subset string) string {
	b.use(k)
	name := ClusterName(k)
	if subset != "" {
		name = SubsetClusterName(k, subset)
	}
	b.clusters[name] = clusterRef{service: k, subset: subset}
	if b.recorder != nil {
		b.recorder.uses = append(b.recorder.uses, clusterUse{service: k, subset: subset})
	}
	return name
}

// useRoutes records that a listener takes the service's routes over RDS.
func (b *builder) useRoutes(k discovery.ServiceKey) {
	b.routes[k] = b.use(k)
}

// lookup returns the service as the proxy sees it: from the catalog, with the
// protocol that its service_defaults set, if any.
func (b *builder) lookup(k discovery.ServiceKey) *discovery.Service {
	svc, ok := b.in.Catalog.Service(k)
	if !ok {
		svc = &discovery.Service{ServiceKey: k, Protocol: discovery.ProtocolTCP}
	}
	if d := b.defaults(k); d != nil && d.Protocol != "" && discovery.Protocol(d.Protocol) != svc.Protocol {
		c := *svc
		c.Protocol = discovery.Protocol(d.Protocol)
		svc = &c
	}
	return svc
}

// defaults returns the service_defaults of a service, or nil.
func (b *builder) defaults(k discovery.ServiceKey) *config.ServiceDefaults {
	if b.in.Config == nil || b.in.Config.Traffic == nil {
		return nil
	}
	return b.in.Config.Traffic.Defaults[config.ServiceRef{Namespace: k.Namespace, Name: k.Name}]
}

// route returns the route block of a service, or nil.
func (b *builder) route(k discovery.ServiceKey) *config.Route {
	if b.in.Config == nil || b.in.Config.Traffic == nil {
		return nil
	}
	return b.in.Config.Traffic.Routes[config.ServiceRef{Namespace: k.Namespace, Name: k.Name}]
}

// subsets returns the subsets declared for a service, ordered by name.
func (b *builder) subsets(k discovery.ServiceKey) []*config.Subset {
	if b.in.Config == nil || b.in.Config.Traffic == nil {
		return nil
	}
	return b.in.Config.Traffic.Subsets[config.ServiceRef{Namespace: k.Namespace, Name: k.Name}]
}

func sortedKeys(m map[discovery.ServiceKey]*discovery.Service) []discovery.ServiceKey {
	keys := make([]discovery.ServiceKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, discovery.ServiceKey.Compare)
	return keys
}

type named interface{ GetName() string }

func resourceName(r types.Resource) string {
	if n, ok := r.(named); ok {
		return n.GetName()
	}
	if c, ok := r.(interface{ GetClusterName() string }); ok {
		return c.GetClusterName()
	}
	return ""
}

func sortByName(rs []types.Resource) {
	slices.SortStableFunc(rs, func(a, b types.Resource) int { return cmp.Compare(resourceName(a), resourceName(b)) })
}

// ResourceName returns the xDS name of a resource.
func ResourceName(r types.Resource) string { return resourceName(r) }

// Equal reports whether two resource lists are identical.
func Equal(a, b []types.Resource) bool {
	return slices.EqualFunc(a, b, func(x, y types.Resource) bool { return proto.Equal(x, y) })
}
