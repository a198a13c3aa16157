package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// entry is one resource ready to send: marshalled once, whatever the number
// of proxies and streams that receive it, with a version derived from its
// bytes.
type entry struct {
	name    string
	version string
	any     *anypb.Any
}

// typeSet is the resources of one type for one proxy, with a version derived
// from their names and versions. It may lie on a base set shared with other
// proxies (their outbound part), adding the proxy's own few resources, so
// that a proxy costs its own resources only.
type typeSet struct {
	version string
	items   map[string]*entry
	base    *typeSet
}

// get returns a resource by name.
func (ts *typeSet) get(name string) (*entry, bool) {
	if e, ok := ts.items[name]; ok {
		return e, true
	}
	if ts.base != nil {
		return ts.base.get(name)
	}
	return nil, false
}

// each calls f for every resource (unordered).
func (ts *typeSet) each(f func(*entry)) {
	for _, e := range ts.items {
		f(e)
	}
	if ts.base != nil {
		ts.base.each(f)
	}
}

// layer puts own on base: own's names must not occur in base.
func layer(base, own *typeSet) *typeSet {
	switch {
	case own == nil || len(own.items) == 0 && own.base == nil:
		return base
	case base == nil || len(base.items) == 0 && base.base == nil:
		return own
	}
	h := sha256.Sum256([]byte(base.version + "+" + own.version))
	return &typeSet{version: hex.EncodeToString(h[:8]), items: own.items, base: base}
}

func newTypeSet(entries []*entry) *typeSet {
	ts := &typeSet{items: make(map[string]*entry, len(entries))}
	h := sha256.New()
	for _, e := range entries { // sorted by name by the caller
		ts.items[e.name] = e
		h.Write([]byte(e.name))
		h.Write([]byte{0})
		h.Write([]byte(e.version))
		h.Write([]byte{0})
	}
	ts.version = hex.EncodeToString(h.Sum(nil)[:8])
	return ts
}

// marshaller turns resources into entries, once per resource object: the
// translation memo shares objects between proxies, and so do entries.
type marshaller struct {
	mu      sync.Mutex
	gen     uint64
	entries map[types.Resource]marshalled
}

type marshalled struct {
	e   *entry
	gen uint64
}

func newMarshaller() *marshaller {
	return &marshaller{entries: map[types.Resource]marshalled{}}
}

func (m *marshaller) entry(typeURL string, r types.Resource, name string) (*entry, error) {
	m.mu.Lock()
	if it, ok := m.entries[r]; ok {
		it.gen = m.gen
		m.entries[r] = it
		m.mu.Unlock()
		return it.e, nil
	}
	m.mu.Unlock()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	e := &entry{name: name, version: hex.EncodeToString(sum[:8]), any: &anypb.Any{TypeUrl: typeURL, Value: b}}
	m.mu.Lock()
	m.entries[r] = marshalled{e: e, gen: m.gen}
	m.mu.Unlock()
	return e, nil
}

// sweep forgets the resources not used since the previous sweep.
func (m *marshaller) sweep() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range m.entries {
		if v.gen < m.gen {
			delete(m.entries, k)
		}
	}
	m.gen++
}

// xdsCache is Bowline's implementation of go-control-plane's cache: it holds
// each proxy's resources per type as pre-marshalled entries and answers
// state-of-the-world and delta watches from them. Responses reuse the
// marshalled bytes; state-of-the-world responses for types that are not full
// state (routes, endpoints, secrets) carry only what the proxy does not
// already have, and delta responses only what changed.
type xdsCache struct {
	mu     sync.Mutex
	nodes  map[string]*nodeState
	nextID int64
	// diffs memoizes differences between type sets (incremental.go).
	diffs map[[2]*typeSet]*setDiff
}

type nodeState struct {
	types   map[string]*typeSet
	watches map[int64]*watch
	// sent is what the proxy's stream was last sent, by type, for the
	// types answered incrementally (incremental.go).
	sent map[string]*sentState
}

type watch struct {
	typeURL string
	req     *cachev3.Request
	dreq    *cachev3.DeltaRequest
	sub     cachev3.Subscription
	ch      chan cachev3.Response
	dch     chan cachev3.DeltaResponse
}

var _ cachev3.Cache = (*xdsCache)(nil)

func newXDSCache() *xdsCache { return &xdsCache{nodes: map[string]*nodeState{}} }

func (c *xdsCache) node(id string) *nodeState {
	n, ok := c.nodes[id]
	if !ok {
		n = &nodeState{types: map[string]*typeSet{}, watches: map[int64]*watch{}, sent: map[string]*sentState{}}
		c.nodes[id] = n
	}
	return n
}

// set replaces a proxy's resources of the given types and answers the
// watches that the change concerns.
func (c *xdsCache) set(nodeID string, sets map[string]*typeSet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.node(nodeID)
	for t, ts := range sets {
		n.types[t] = ts
	}
	for id, w := range n.watches {
		if _, changed := sets[w.typeURL]; !changed {
			continue
		}
		if c.tryRespond(n, w) {
			delete(n.watches, id)
		}
	}
}

// clear forgets a proxy.
func (c *xdsCache) clear(nodeID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.nodes, nodeID)
}

// CreateWatch implements cache.ConfigWatcher for state-of-the-world streams.
func (c *xdsCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	return c.create(req.GetNode().GetId(), &watch{typeURL: req.GetTypeUrl(), req: req, sub: sub, ch: ch})
}

// CreateDeltaWatch implements cache.ConfigWatcher for delta streams.
func (c *xdsCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	return c.create(req.GetNode().GetId(), &watch{typeURL: req.GetTypeUrl(), dreq: req, sub: sub, dch: ch})
}

func (c *xdsCache) create(nodeID string, w *watch) (func(), error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.node(nodeID)
	if c.tryRespond(n, w) {
		return func() {}, nil
	}
	c.nextID++
	id := c.nextID
	n.watches[id] = w
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if n, ok := c.nodes[nodeID]; ok {
			delete(n.watches, id)
		}
	}, nil
}

// Fetch implements cache.ConfigFetcher; REST polling is not served.
func (c *xdsCache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, errors.New("xds: fetch (REST) is not supported; use ADS")
}

// tryRespond answers w if the proxy lacks something it subscribed to, and
// reports whether it did.
func (c *xdsCache) tryRespond(n *nodeState, w *watch) bool {
	ts, ok := n.types[w.typeURL]
	if !ok {
		return false // nothing built for this proxy yet
	}
	if w.dch != nil {
		if decided, sent := c.respondDeltaIncremental(n, ts, w); decided {
			return sent
		}
		next := respondDelta(ts, w)
		if next != nil {
			n.sent[w.typeURL] = &sentState{ts: ts, next: next}
		}
		return next != nil
	}
	if cachev3.ResourceRequiresFullStateInSotw(w.typeURL) {
		return respondSotW(ts, w) != nil // listeners and clusters go whole: nothing to remember
	}
	if decided, sent := c.respondSotWIncremental(n, ts, w); decided {
		return sent
	}
	next := respondSotW(ts, w)
	if next != nil {
		n.sent[w.typeURL] = &sentState{ts: ts, next: next, subs: w.sub.SubscribedResources(), wildcard: w.sub.IsWildcard()}
	}
	return next != nil
}

// subscribed lists the resources of ts a subscription covers (unordered).
func subscribed(ts *typeSet, sub cachev3.Subscription) []*entry {
	var out []*entry
	if sub.IsWildcard() {
		ts.each(func(e *entry) { out = append(out, e) })
		return out
	}
	for name := range sub.SubscribedResources() {
		if e, ok := ts.get(name); ok {
			out = append(out, e)
		}
	}
	return out
}

// respondSotW answers w with what the proxy lacks (every subscribed resource
// for the types sent whole), and returns the version map it handed over (nil
// when it sent nothing).
func respondSotW(ts *typeSet, w *watch) map[string]string {
	returned := w.sub.ReturnedResources()
	entries := subscribed(ts, w.sub)
	full := cachev3.ResourceRequiresFullStateInSotw(w.typeURL)
	if w.req.GetVersionInfo() == ts.version {
		// Same version: answer only a resource subscribed and not yet sent.
		missing := false
		for _, e := range entries {
			if _, ok := returned[e.name]; !ok {
				missing = true
				break
			}
		}
		if !missing {
			return nil
		}
	}
	next := make(map[string]string, len(entries))
	var send []*entry
	for _, e := range entries {
		next[e.name] = e.version
		// Listeners and clusters are sent whole; routes, endpoints and
		// secrets only when the proxy lacks that version.
		if !full && returned[e.name] == e.version {
			continue
		}
		send = append(send, e)
	}
	if !full {
		// Keep what the proxy still holds from earlier responses.
		for name, v := range returned {
			if _, ok := next[name]; !ok {
				if _, still := ts.get(name); still {
					next[name] = v
				}
			}
		}
		if len(send) == 0 && w.req.GetVersionInfo() != "" {
			// Nothing new for this proxy (another resource of the type
			// changed): no response is needed for routes and endpoints.
			return nil
		}
	}
	slices.SortFunc(send, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	resp := &discoverypb.DiscoveryResponse{VersionInfo: ts.version, TypeUrl: w.typeURL, Resources: make([]*anypb.Any, len(send))}
	for i, e := range send {
		resp.Resources[i] = e.any
	}
	w.ch <- &cachev3.PassthroughResponse{Request: w.req, DiscoveryResponse: resp, ReturnedResources: next}
	return next
}

// respondDelta answers w with every subscribed resource the proxy lacks, and
// returns the version map it handed over (nil when it sent nothing).
func respondDelta(ts *typeSet, w *watch) map[string]string {
	returned := w.sub.ReturnedResources()
	resp := &discoverypb.DeltaDiscoveryResponse{SystemVersionInfo: ts.version, TypeUrl: w.typeURL}
	entries := subscribed(ts, w.sub)
	next := make(map[string]string, len(entries))
	for _, e := range entries {
		next[e.name] = e.version
		if returned[e.name] != e.version {
			resp.Resources = append(resp.Resources, &discoverypb.Resource{Name: e.name, Version: e.version, Resource: e.any})
		}
	}
	for name := range returned {
		if _, ok := next[name]; ok {
			continue
		}
		if _, exists := ts.get(name); exists && !w.sub.IsWildcard() {
			// Still exists but no longer subscribed: forget it silently.
			continue
		}
		resp.RemovedResources = append(resp.RemovedResources, name)
	}
	if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 {
		return nil
	}
	slices.SortFunc(resp.Resources, func(a, b *discoverypb.Resource) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.Sort(resp.RemovedResources)
	w.dch <- &cachev3.DeltaPassthroughResponse{DeltaRequest: w.dreq, DeltaDiscoveryResponse: resp, NextVersionMap: next}
	return next
}

// typeURLs lists the types a proxy is served, in the order Envoy wants them
// to change (clusters before endpoints, listeners before routes).
var typeURLs = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType}
