package server

import (
	"slices"
	"strings"
	"sync"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Response bodies. What a stream is sent for a type depends only on what it
// holds (the type set it last acknowledged, under the subscription of
// then), on the current type set and on its subscription. Proxies sharing an
// outbound part share those type sets, and interned subscriptions make equal
// subscriptions the same pointer, so the body is computed and encoded once,
// by the first stream that needs it, for all of them.

// subscription is what a stream asked for of one type: everything
// (wildcard) and/or the named resources.
type subscription struct {
	wildcard bool
	names    *nameSet
}

func (s subscription) covers(name string) bool { return s.wildcard || s.names.has(name) }

// narrow returns what a client holding resources under held still holds
// once it subscribes to sub: clients drop what they no longer subscribe to.
func (in *interner) narrow(held, sub subscription) subscription {
	switch {
	case sub.wildcard:
		return held
	case held.wildcard:
		return subscription{names: sub.names}
	case held.names == nil || sub.names == nil:
		return subscription{}
	}
	keep := make(map[string]struct{}, min(held.names.len(), sub.names.len()))
	for n := range held.names.names {
		if sub.names.has(n) {
			keep[n] = struct{}{}
		}
	}
	if len(keep) == held.names.len() {
		return held
	}
	return subscription{names: in.intern(keep)}
}

// bodyKey identifies a response body by everything it is computed from.
type bodyKey struct {
	delta   bool
	typeURL string
	full    bool // state of the world, sent whole (listeners, clusters)
	must    bool // answer even when there is nothing to send
	held    *typeSet
	heldSub subscription
	cur     *typeSet
	sub     subscription
}

type bodyEntry struct {
	once sync.Once
	body [][]byte // nil: nothing to send
	err  error
}

// chunkKey identifies the encoded resources of a shared type set.
type chunkKey struct {
	delta   bool
	typeURL string
	ts      *typeSet
}

// bodies memoizes response bodies and the differences between type sets.
type bodies struct {
	mu     sync.Mutex
	m      map[bodyKey]*bodyEntry
	chunks map[chunkKey]*bodyEntry
	bytes  int
	diffs  map[[2]*typeSet]*setDiff
}

// Bounds of the memo; it is emptied when it passes either (entries streams
// are sending stay alive with their frames).
const (
	maxBodies     = 1024
	maxBodyBytes  = 64 << 20
	maxDiffMemory = 256
)

func newBodies() *bodies {
	return &bodies{m: map[bodyKey]*bodyEntry{}, chunks: map[chunkKey]*bodyEntry{}}
}

// get returns the body for k, computing it once; initial, when not nil, is
// what a delta client said it holds on reconnecting (such bodies are not
// memoized). It returns nil when there is nothing to send.
func (b *bodies) get(k bodyKey, initial map[string]string) ([][]byte, error) {
	if k.cur.base != nil && k.cur.base.base == nil && k.sub.wildcard && initial == nil && (k.full || k.held == nil) {
		return b.layered(k)
	}
	if initial != nil || k.cur.base != nil {
		// A reconnecting client's own state, or a set layered for one
		// proxy: nobody else would use the body.
		body, err := b.compute(k, initial)
		if body == nil || err != nil {
			return nil, err
		}
		return [][]byte{body}, nil
	}
	b.mu.Lock()
	e, ok := b.m[k]
	if !ok {
		if len(b.m) >= maxBodies || b.bytes >= maxBodyBytes {
			b.m, b.bytes = map[bodyKey]*bodyEntry{}, 0
		}
		e = &bodyEntry{}
		b.m[k] = e
	}
	b.mu.Unlock()
	e.once.Do(func() {
		body, err := b.compute(k, nil)
		if body != nil {
			e.body = [][]byte{body}
		}
		e.err = err
		b.mu.Lock()
		b.bytes += len(body)
		b.mu.Unlock()
	})
	return e.body, e.err
}

// layered answers with every resource of a set layered for one proxy (its
// own few resources on a part shared with others): the shared part's
// resources are encoded once for every proxy on it, and the response is
// sent as the concatenation of a header (version and type), that encoding,
// and the encoding of the proxy's own resources. A repeated field may come
// in several runs, so the concatenation is the response.
func (b *bodies) layered(k bodyKey) ([][]byte, error) {
	b.mu.Lock()
	ck := chunkKey{delta: k.delta, typeURL: k.typeURL, ts: k.cur.base}
	e, ok := b.chunks[ck]
	if !ok {
		if len(b.chunks) >= maxBodies {
			b.chunks = map[chunkKey]*bodyEntry{}
		}
		e = &bodyEntry{}
		b.chunks[ck] = e
	}
	b.mu.Unlock()
	e.once.Do(func() {
		var base []byte
		base, e.err = encode(k.delta, "", "", sortedEntries(k.cur.base), nil)
		e.body = [][]byte{base}
	})
	if e.err != nil {
		return nil, e.err
	}
	head, err := encode(k.delta, k.cur.version, k.typeURL, nil, nil)
	if err != nil {
		return nil, err
	}
	own := make([]*entry, 0, len(k.cur.items))
	for _, x := range k.cur.items {
		own = append(own, x)
	}
	slices.SortFunc(own, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	tail, err := encode(k.delta, "", "", own, nil)
	if err != nil {
		return nil, err
	}
	return [][]byte{head, e.body[0], tail}, nil
}

func sortedEntries(ts *typeSet) []*entry {
	out := make([]*entry, 0, len(ts.items))
	ts.each(func(e *entry) { out = append(out, e) })
	slices.SortFunc(out, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	return out
}

// encode marshals a response without its nonce (empty fields are left
// out: encode(…, "", "", entries, nil) is the resources alone).
func encode(delta bool, version, typeURL string, send []*entry, removed []string) ([]byte, error) {
	var msg proto.Message
	if delta {
		r := &discoverypb.DeltaDiscoveryResponse{SystemVersionInfo: version, TypeUrl: typeURL, RemovedResources: removed,
			Resources: make([]*discoverypb.Resource, len(send))}
		for i, e := range send {
			r.Resources[i] = &discoverypb.Resource{Name: e.name, Version: e.version, Resource: e.any}
		}
		msg = r
	} else {
		r := &discoverypb.DiscoveryResponse{VersionInfo: version, TypeUrl: typeURL, Resources: make([]*anypb.Any, len(send))}
		for i, e := range send {
			r.Resources[i] = e.any
		}
		msg = r
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if body == nil {
		body = []byte{} // an empty response is still a response
	}
	return body, nil
}

// reset empties the memo (a new input makes its bodies obsolete).
func (b *bodies) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.m, b.bytes = map[bodyKey]*bodyEntry{}, 0
	b.chunks = map[chunkKey]*bodyEntry{}
}

// compute builds the response body of k.
func (b *bodies) compute(k bodyKey, initial map[string]string) ([]byte, error) {
	var send []*entry
	var removed []string
	switch {
	case k.full:
		// The whole subscribed state, whatever the client holds.
		send = covered(k.cur, k.sub)
	case k.held != nil && k.heldSub == k.sub:
		// Same subscription: only what changed between the two sets.
		d := b.diff(k.held, k.cur)
		for _, n := range d.changed {
			if k.sub.covers(n) {
				e, _ := k.cur.get(n)
				send = append(send, e)
			}
		}
		if k.delta {
			for _, n := range d.removed {
				if k.sub.covers(n) {
					removed = append(removed, n)
				}
			}
		}
	default:
		// A new subscription (or a first answer): everything subscribed the
		// client does not hold at its version.
		holds := func(e *entry) bool {
			if k.held != nil && k.heldSub.covers(e.name) {
				if old, ok := k.held.get(e.name); ok && old.version == e.version {
					return true
				}
			}
			return initial != nil && initial[e.name] == e.version
		}
		for _, e := range covered(k.cur, k.sub) {
			if !holds(e) {
				send = append(send, e)
			}
		}
		if k.delta {
			gone := func(name string) bool {
				_, ok := k.cur.get(name)
				return !ok && k.sub.covers(name)
			}
			if k.held != nil {
				for _, e := range covered(k.held, k.heldSub) {
					if gone(e.name) {
						removed = append(removed, e.name)
					}
				}
			}
			for name := range initial {
				if gone(name) {
					removed = append(removed, name)
				}
			}
			slices.Sort(removed)
			removed = slices.Compact(removed)
		}
	}
	if len(send) == 0 && len(removed) == 0 && !k.must && !k.full {
		return nil, nil
	}
	slices.SortFunc(send, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	slices.Sort(removed)
	return encode(k.delta, k.cur.version, k.typeURL, send, removed)
}

// covered lists the resources of ts a subscription covers (unordered).
func covered(ts *typeSet, sub subscription) []*entry {
	var out []*entry
	if sub.wildcard {
		ts.each(func(e *entry) { out = append(out, e) })
		return out
	}
	if sub.names == nil {
		return nil
	}
	for name := range sub.names.names {
		if e, ok := ts.get(name); ok {
			out = append(out, e)
		}
	}
	return out
}

// setDiff is how one type set differs from another: the names whose entry
// changed or appeared, and those that disappeared.
type setDiff struct {
	changed []string
	removed []string
}

// diff returns how c differs from a, memoized by the pair.
func (b *bodies) diff(a, c *typeSet) *setDiff {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.diffLocked(a, c)
}

func (b *bodies) diffLocked(a, c *typeSet) *setDiff {
	key := [2]*typeSet{a, c}
	if d, ok := b.diffs[key]; ok {
		return d
	}
	d := &setDiff{}
	if a.base != nil && c.base != nil {
		// Layered sets: the names that can differ are those of the bases'
		// difference and those of either own layer.
		bd := b.diffLocked(a.base, c.base)
		cand := make(map[string]struct{}, len(bd.changed)+len(bd.removed)+len(a.items)+len(c.items))
		for _, list := range [][]string{bd.changed, bd.removed} {
			for _, n := range list {
				cand[n] = struct{}{}
			}
		}
		for n := range a.items {
			cand[n] = struct{}{}
		}
		for n := range c.items {
			cand[n] = struct{}{}
		}
		for n := range cand {
			d.add(n, a, c)
		}
	} else {
		c.each(func(e *entry) {
			if old, ok := a.get(e.name); !ok || old.version != e.version {
				d.changed = append(d.changed, e.name)
			}
		})
		a.each(func(e *entry) {
			if _, ok := c.get(e.name); !ok {
				d.removed = append(d.removed, e.name)
			}
		})
	}
	if b.diffs == nil || len(b.diffs) >= maxDiffMemory {
		b.diffs = map[[2]*typeSet]*setDiff{}
	}
	b.diffs[key] = d
	return d
}

func (d *setDiff) add(name string, a, c *typeSet) {
	old, inA := a.get(name)
	cur, inC := c.get(name)
	switch {
	case inC && (!inA || old.version != cur.version):
		d.changed = append(d.changed, name)
	case inA && !inC:
		d.removed = append(d.removed, name)
	}
}
