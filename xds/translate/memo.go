package translate

import (
	"sync"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// Memo remembers the per-service resources that many proxies share (a
// service's clusters, endpoints and routes), so that a change costs one
// translation per changed service, not one per proxy and service. Its keys
// hold everything the resource is made of (the service's content hash, the
// declarations of the rules that apply, the proxy kind where it matters), so
// using it never changes what Build returns. Resources from a Memo are shared:
// never modify them.
//
// Call Sweep after each round of builds to forget what that round did not use.
type Memo struct {
	mu       sync.Mutex
	gen      uint64
	clusters map[clusterKey]memoItem[*cluster.Cluster]
	loads    map[loadKey]memoItem[*endpoint.ClusterLoadAssignment]
	routes   map[routeKey]memoItem[routeBuild]
}

type memoItem[T any] struct {
	v   T
	gen uint64
}

type clusterKey struct {
	name     string
	protocol discovery.Protocol
	grpc     bool
	defaults *config.ServiceDefaults
}

type loadKey struct {
	name    string
	service [32]byte
	subset  *config.Subset
	near    discovery.Locality
	hasNear bool
}

type routeKey struct {
	service  discovery.ServiceKey
	protocol discovery.Protocol
	route    *config.Route
	defaults *config.ServiceDefaults
}

// routeBuild is a route configuration with the clusters it refers to.
type routeBuild struct {
	rc   *route.RouteConfiguration
	uses []clusterUse
}

type clusterUse struct {
	service discovery.ServiceKey
	subset  string
}

// NewMemo returns an empty memo.
func NewMemo() *Memo {
	return &Memo{
		clusters: map[clusterKey]memoItem[*cluster.Cluster]{},
		loads:    map[loadKey]memoItem[*endpoint.ClusterLoadAssignment]{},
		routes:   map[routeKey]memoItem[routeBuild]{},
	}
}

// Sweep forgets the entries that were not used since the previous Sweep.
func (m *Memo) Sweep() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range m.clusters {
		if v.gen < m.gen {
			delete(m.clusters, k)
		}
	}
	for k, v := range m.loads {
		if v.gen < m.gen {
			delete(m.loads, k)
		}
	}
	for k, v := range m.routes {
		if v.gen < m.gen {
			delete(m.routes, k)
		}
	}
	m.gen++
}

// Len reports the number of remembered resources.
func (m *Memo) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.clusters) + len(m.loads) + len(m.routes)
}

func memoGet[K comparable, T any](m *Memo, items map[K]memoItem[T], k K, build func() T) T {
	if m == nil {
		return build()
	}
	m.mu.Lock()
	if it, ok := items[k]; ok {
		it.gen = m.gen
		items[k] = it
		m.mu.Unlock()
		return it.v
	}
	m.mu.Unlock()
	v := build()
	m.mu.Lock()
	items[k] = memoItem[T]{v: v, gen: m.gen}
	m.mu.Unlock()
	return v
}

func (b *builder) memoCluster(name string, svc *discovery.Service, c clusterRef) *cluster.Cluster {
	d := b.defaults(c.service)
	k := clusterKey{name: name, protocol: svc.Protocol, grpc: b.p.Kind == KindGRPC, defaults: d}
	m := b.in.Memo
	if m == nil {
		return b.buildCluster(name, svc.Protocol, d)
	}
	return memoGet(m, m.clusters, k, func() *cluster.Cluster { return b.buildCluster(name, svc.Protocol, d) })
}

func (b *builder) memoLoadAssignment(name string, svc *discovery.Service, c clusterRef) *endpoint.ClusterLoadAssignment {
	m := b.in.Memo
	if m == nil {
		return b.buildLoadAssignment(name, svc, c.subset)
	}
	k := loadKey{name: name, service: b.in.Catalog.ServiceHash(c.service)}
	if _, known := b.in.Catalog.Service(c.service); !known {
		k.service = [32]byte{} // unknown: no endpoints
	}
	if c.subset != "" && b.in.Config != nil {
		k.subset, _ = b.in.Config.Traffic.Subset(ref(c.service), c.subset)
	}
	if d := b.defaults(c.service); d != nil && d.LocalityFailover {
		k.near, k.hasNear = b.p.Locality, true
	}
	return memoGet(m, m.loads, k, func() *endpoint.ClusterLoadAssignment { return b.buildLoadAssignment(name, svc, c.subset) })
}

// memoRouteConfig builds (or recalls) a route configuration and records the
// clusters it refers to either way.
func (b *builder) memoRouteConfig(svc *discovery.Service) *route.RouteConfiguration {
	m := b.in.Memo
	k := routeKey{service: svc.ServiceKey, protocol: svc.Protocol, route: b.route(svc.ServiceKey), defaults: b.defaults(svc.ServiceKey)}
	build := func() routeBuild {
		rec := &recorder{}
		b.recorder = rec
		rc := b.buildRouteConfig(svc)
		b.recorder = nil
		return routeBuild{rc: rc, uses: rec.uses}
	}
	var rb routeBuild
	if m == nil {
		rb = build()
	} else {
		rb = memoGet(m, m.routes, k, build)
	}
	for _, u := range rb.uses {
		b.useCluster(u.service, u.subset)
	}
	return rb.rc
}

// recorder notes the clusters a route configuration refers to.
type recorder struct{ uses []clusterUse }
