package server

import (
	"maps"
	"reflect"
	"slices"
	"strings"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Incremental delta responses. A proxy receiving every service holds
// thousands of resources of a type; a change to one service changes one or
// two of them. Comparing every resource the proxy holds with the new set, for
// every proxy, makes a one-service change cost proxies × services. Instead,
// the cache remembers what it last sent on each proxy's delta stream (the
// type set and the version map handed to go-control-plane), and when the next
// watch is a plain ACK of that state, it answers from the difference between
// the two type sets, which is computed once for all the proxies that share
// them (their common outbound part).

// sentState is what a delta stream was last sent for one type: the type set
// the response was computed from, and the version map go-control-plane keeps
// as the stream's returned resources.
type sentState struct {
	ts   *typeSet
	next map[string]string
	// subs and wildcard are the state-of-the-world subscription the
	// response answered (a state-of-the-world request names every resource
	// each time).
	subs     map[string]struct{}
	wildcard bool
}

// setDiff is how one type set differs from another: the names whose entry
// changed or appeared, and those that disappeared.
type setDiff struct {
	changed []string
	removed []string
}

// maxDiffs bounds the memo of differences; it is emptied when full.
const maxDiffs = 256

// diff returns how b differs from a, memoized by the pair. c.mu must be held.
func (c *xdsCache) diff(a, b *typeSet) *setDiff {
	key := [2]*typeSet{a, b}
	if d, ok := c.diffs[key]; ok {
		return d
	}
	var cand map[string]struct{}
	if a.base != nil && b.base != nil {
		// Layered sets: the names that can differ are those of the bases'
		// difference and those of either own layer.
		bd := c.diff(a.base, b.base)
		cand = make(map[string]struct{}, len(bd.changed)+len(bd.removed)+len(a.items)+len(b.items))
		for _, n := range bd.changed {
			cand[n] = struct{}{}
		}
		for _, n := range bd.removed {
			cand[n] = struct{}{}
		}
		for n := range a.items {
			cand[n] = struct{}{}
		}
		for n := range b.items {
			cand[n] = struct{}{}
		}
	}
	d := &setDiff{}
	if cand != nil {
		for n := range cand {
			d.add(n, a, b)
		}
	} else {
		b.each(func(e *entry) {
			if old, ok := a.get(e.name); !ok || old.version != e.version {
				d.changed = append(d.changed, e.name)
			}
		})
		a.each(func(e *entry) {
			if _, ok := b.get(e.name); !ok {
				d.removed = append(d.removed, e.name)
			}
		})
	}
	if c.diffs == nil || len(c.diffs) >= maxDiffs {
		c.diffs = map[[2]*typeSet]*setDiff{}
	}
	c.diffs[key] = d
	return d
}

func (d *setDiff) add(name string, a, b *typeSet) {
	old, inA := a.get(name)
	cur, inB := b.get(name)
	switch {
	case inB && (!inA || old.version != cur.version):
		d.changed = append(d.changed, name)
	case inA && !inB:
		d.removed = append(d.removed, name)
	}
}

// sameMap reports whether two maps are the same map object.
func sameMap(a, b map[string]string) bool {
	return a != nil && reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// plainDeltaAck reports whether a delta request only acknowledges a
// response: it changes nothing in the subscription.
func plainDeltaAck(r *cachev3.DeltaRequest) bool {
	return r.GetResponseNonce() != "" && len(r.GetResourceNamesSubscribe()) == 0 && len(r.GetResourceNamesUnsubscribe()) == 0 &&
		len(r.GetInitialResourceVersions()) == 0
}

// respondDeltaIncremental answers w from what changed since prev, when w's
// subscription is exactly what prev left (see the top of this file). The
// first result reports whether it could tell; the second, whether it sent a
// response.
func (c *xdsCache) respondDeltaIncremental(n *nodeState, ts *typeSet, w *watch) (decided, sent bool) {
	prev := n.sent[w.typeURL]
	returned := w.sub.ReturnedResources()
	if prev == nil || !sameMap(prev.next, returned) || !plainDeltaAck(w.dreq) {
		return false, false
	}
	if prev.ts == ts {
		return true, false
	}
	d := c.diff(prev.ts, ts)
	resp := &discoverypb.DeltaDiscoveryResponse{SystemVersionInfo: ts.version, TypeUrl: w.typeURL}
	subscribed := w.sub.SubscribedResources()
	wildcard := w.sub.IsWildcard()
	var next map[string]string
	for _, name := range d.changed {
		if _, ok := subscribed[name]; !ok && !wildcard {
			continue
		}
		e, _ := ts.get(name)
		if returned[e.name] == e.version {
			continue
		}
		if next == nil {
			next = maps.Clone(returned)
		}
		next[e.name] = e.version
		resp.Resources = append(resp.Resources, &discoverypb.Resource{Name: e.name, Version: e.version, Resource: e.any})
	}
	for _, name := range d.removed {
		if _, ok := returned[name]; !ok {
			continue
		}
		if next == nil {
			next = maps.Clone(returned)
		}
		delete(next, name)
		resp.RemovedResources = append(resp.RemovedResources, name)
	}
	if next == nil {
		// Nothing this proxy holds changed: it is as good as sent.
		n.sent[w.typeURL] = &sentState{ts: ts, next: returned}
		return true, false
	}
	slices.SortFunc(resp.Resources, func(a, b *discoverypb.Resource) int { return strings.Compare(a.GetName(), b.GetName()) })
	slices.Sort(resp.RemovedResources)
	n.sent[w.typeURL] = &sentState{ts: ts, next: next}
	w.dch <- &cachev3.DeltaPassthroughResponse{DeltaRequest: w.dreq, DeltaDiscoveryResponse: resp, NextVersionMap: next}
	return true, true
}

// sameNames reports whether two subscriptions name the same resources.
func sameNames(a, b map[string]struct{}) bool {
	if reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer() {
		return true
	}
	if len(a) != len(b) {
		return false
	}
	for n := range a {
		if _, ok := b[n]; !ok {
			return false
		}
	}
	return true
}

// respondSotWIncremental is respondDeltaIncremental for the state-of-the-world
// types that are not sent whole (routes, endpoints, secrets): when w is an
// ACK of the last response, naming the same resources, it answers from what
// changed since.
func (c *xdsCache) respondSotWIncremental(n *nodeState, ts *typeSet, w *watch) (decided, sent bool) {
	prev := n.sent[w.typeURL]
	returned := w.sub.ReturnedResources()
	if prev == nil || !sameMap(prev.next, returned) || w.req.GetVersionInfo() != prev.ts.version ||
		w.sub.IsWildcard() != prev.wildcard || !sameNames(w.sub.SubscribedResources(), prev.subs) {
		return false, false
	}
	// Each request brings a new (then unchanging) set of names: remember
	// this one, so that the next comparison with it is a pointer's.
	prev.subs = w.sub.SubscribedResources()
	if prev.ts == ts {
		return true, false
	}
	d := c.diff(prev.ts, ts)
	subscribed := w.sub.SubscribedResources()
	var next map[string]string
	var send []*entry
	for _, name := range d.changed {
		if _, ok := subscribed[name]; !ok && !prev.wildcard {
			continue
		}
		e, _ := ts.get(name)
		if returned[e.name] == e.version {
			continue
		}
		if next == nil {
			next = maps.Clone(returned)
		}
		next[e.name] = e.version
		send = append(send, e)
	}
	if len(send) == 0 {
		// Nothing new for this proxy (another resource of the type
		// changed): no response is needed for these types.
		return true, false
	}
	for _, name := range d.removed {
		delete(next, name)
	}
	slices.SortFunc(send, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	resp := &discoverypb.DiscoveryResponse{VersionInfo: ts.version, TypeUrl: w.typeURL, Resources: make([]*anypb.Any, len(send))}
	for i, e := range send {
		resp.Resources[i] = e.any
	}
	n.sent[w.typeURL] = &sentState{ts: ts, next: next, subs: subscribed, wildcard: prev.wildcard}
	w.ch <- &cachev3.PassthroughResponse{Request: w.req, DiscoveryResponse: resp, ReturnedResources: next}
	return true, true
}
