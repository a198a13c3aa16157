package server

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
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

// typeURLs lists the types a proxy is served, in the order Envoy wants them
// to change (clusters before endpoints, listeners before routes).
var typeURLs = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType}
