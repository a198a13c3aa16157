package server

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bowlinemesh/bowline/xds/translate"
)

// The aggregated discovery service, state of the world and delta.
//
// Each stream keeps, per type, only pointers: its subscription (an interned
// name set), the type set its client acknowledged last (what it holds), and
// the response in flight. A response is sent when the proxy's type set or
// the subscription moves away from what the client holds, one at a time per
// type (the next waits for the ACK, so a burst of changes reaches a slow
// client as one response), and is computed from those pointers alone, so
// the streams of proxies that share a configuration share one encoded body
// (bodies.go, wire.go).
//
// Protocol points, as Envoy and gRPC's xDS client expect them:
//   - the node is read from a stream's first request;
//   - listeners and clusters asked for with no names on a stream's first
//     request (or with "*") are a wildcard subscription;
//   - state of the world: listeners and clusters are sent whole, routes,
//     endpoints and secrets only those the client lacks; a request whose
//     nonce is not the last one sent for its type is stale and ignored;
//   - delta: subscriptions change by the names each request adds and
//     removes; a reconnecting client's initial versions are honoured;
//     removed resources are named;
//   - a rejected (NACKed) response is not sent again: the client keeps what
//     it holds until the configuration changes.

// nTypes is the number of types served (typeURLs, in the order responses go
// out: clusters before endpoints, listeners before routes).
var nTypes = len(typeURLs)

func typeIndex(url string) int { return slices.Index(typeURLs, url) }

// legacyWildcard reports whether a type may be subscribed to as a whole by
// naming nothing.
func legacyWildcard(url string) bool {
	return url == resourcev3.ListenerType || url == resourcev3.ClusterType
}

// ads implements the aggregated discovery service on a Server.
type ads Server

var _ discoverypb.AggregatedDiscoveryServiceServer = (*ads)(nil)

func (a *ads) StreamAggregatedResources(gs discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return (*Server)(a).serve(gs, false)
}

func (a *ads) DeltaAggregatedResources(gs discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return (*Server)(a).serve(gs, true)
}

// adsStream is one ADS stream.
type adsStream struct {
	s     *Server
	id    int64
	delta bool
	gs    grpc.ServerStream
	// nodeID and p are set on the first request, under s.mu.
	nodeID string
	p      *proxy
	// pending: a goroutine is on its way to flush (poke).
	pending atomic.Bool
	// mu serializes the handling of requests and the sending of responses;
	// the fields below are under it.
	mu      sync.Mutex
	types   []*typeState
	nonces  uint64
	closed  bool
	sendErr error
}

// typeState is a stream's state for one type.
type typeState struct {
	url string
	sub subscription
	// held is what the client holds: the resources of the set it last
	// acknowledged that the subscription of then covered.
	held    *typeSet
	heldSub subscription
	// answered: the type's first request has been answered (or found to
	// need no answer).
	answered bool
	// initial is what a reconnecting delta client said it holds, until it
	// accepts a response.
	initial   map[string]string
	lastNonce string
	// namesKey identifies the names of the last state-of-the-world request.
	namesKey namesKey
	inflight *sent // awaiting its ACK
	nacked   *sent // the last response rejected
}

type sent struct {
	cur   *typeSet
	sub   subscription
	nonce string
}

// setSub changes the subscription. What the client holds narrows to it:
// it drops the resources it no longer subscribes to, and would need them
// sent again.
func (ts *typeState) setSub(in *interner, sub subscription) {
	ts.sub = sub
	ts.heldSub = in.narrow(ts.heldSub, sub)
	maps.DeleteFunc(ts.initial, func(n string, _ string) bool { return !sub.covers(n) })
	if ts.inflight != nil {
		ts.inflight.sub = in.narrow(ts.inflight.sub, sub)
	}
}

// request is a state-of-the-world or delta request, as received.
type request struct {
	sotw  *sotwRequest
	delta *discoverypb.DeltaDiscoveryRequest
}

func (r request) node() *core.Node {
	if r.delta != nil {
		return r.delta.GetNode()
	}
	return r.sotw.GetNode()
}

// poke has the stream look for something to send, on a goroutine of its
// own: a stream's goroutine waits for requests, and a thousand idle
// proxies need no second goroutine each.
func (st *adsStream) poke() {
	if st.pending.CompareAndSwap(false, true) {
		go func() {
			st.mu.Lock()
			defer st.mu.Unlock()
			st.pending.Store(false)
			if st.closed || st.sendErr != nil {
				return
			}
			st.sendErr = st.flush() // the stream's goroutine returns it
		}()
	}
}

// serve runs one stream until the client ends it or it fails.
func (s *Server) serve(gs grpc.ServerStream, delta bool) error {
	st := &adsStream{s: s, delta: delta, gs: gs, types: make([]*typeState, nTypes)}
	s.mu.Lock()
	s.nextStream++
	st.id = s.nextStream
	s.streams[st.id] = st
	s.mu.Unlock()
	defer s.closeStream(st)
	defer func() {
		// No send once the handler has returned.
		st.mu.Lock()
		st.closed = true
		st.mu.Unlock()
	}()
	for {
		var r request
		var err error
		if delta {
			r.delta = new(discoverypb.DeltaDiscoveryRequest)
			err = gs.RecvMsg(r.delta)
		} else {
			r.sotw = new(sotwRequest) // read by codec (wire.go)
			err = gs.RecvMsg(r.sotw)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		st.mu.Lock()
		err = st.sendErr
		if err == nil {
			err = st.handle(r)
		}
		if r.sotw != nil {
			r.sotw.release() // nothing keeps its names (handleSotW copies them)
		}
		if err == nil {
			err = st.flush()
		}
		st.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// closeStream forgets a stream, and its proxy with its last stream.
func (s *Server) closeStream(st *adsStream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, st.id)
	p := st.p
	if p == nil {
		return
	}
	delete(p.streamSet, st.id)
	p.streams--
	if p.streams <= 0 {
		delete(s.proxies, p.id)
		s.metrics.connected.Set(float64(len(s.proxies)))
		s.log.Info("proxy disconnected", "proxy", p.id)
		return
	}
	if _, ok := p.asked[st.id]; ok {
		delete(p.asked, st.id)
		s.updateListeners(p) // drop what only the closed stream wanted
	}
}

// handle takes one request: the stream's proxy on the first, then the ACK
// or NACK it carries and the subscription it changes.
func (st *adsStream) handle(r request) error {
	s := st.s
	var att *attestation
	if st.p == nil {
		att = s.attestStream(st.id, r.node()) // before the lock: it may take time
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.p == nil {
		if err := st.attach(r.node(), att); err != nil {
			return err
		}
	}
	if r.delta != nil {
		return st.handleDelta(r.delta)
	}
	return st.handleSotW(r.sotw)
}

// attach registers the stream's proxy. s.mu must be held.
func (st *adsStream) attach(node *core.Node, att *attestation) error {
	s := st.s
	if node.GetId() == "" {
		return status.Error(codes.InvalidArgument, "xds: the first request's node has no id")
	}
	spec, err := ProxyFromNode(node)
	if err != nil {
		return status.Error(codes.InvalidArgument, fmt.Sprintf("xds: node %s: %v", node.GetId(), err))
	}
	st.nodeID = node.GetId()
	p, ok := s.proxies[st.nodeID]
	if !ok {
		p = newProxy(st.nodeID, spec, node.GetUserAgentName(), st.delta)
		s.proxies[st.nodeID] = p
		s.attachIdentityLocked(p, att)
		s.metrics.connected.Set(float64(len(s.proxies)))
		s.log.Info("proxy connected", "proxy", p.id, "kind", spec.Kind, "service", spec.Service, "delta", st.delta)
		s.rebuildLocked(p, s.partsLocked(), time.Now())
	}
	p.streams++
	p.streamSet[st.id] = st
	st.p = p
	return nil
}

// state returns the stream's state for a type (nil for a type not served).
func (st *adsStream) state(url string) (*typeState, bool) {
	i := typeIndex(url)
	if i < 0 {
		return nil, false
	}
	if st.types[i] == nil {
		st.types[i] = &typeState{url: url}
		return st.types[i], true
	}
	return st.types[i], false
}

// ack takes the answer a request carries, when it answers the response in
// flight. s.mu must be held.
func (st *adsStream) ack(ts *typeState, nonce string, errDetail *status.Status) {
	if nonce == "" || ts.inflight == nil || nonce != ts.inflight.nonce {
		return
	}
	p := st.p
	name := typeNames[ts.url]
	if errDetail != nil {
		ts.nacked = ts.inflight
		p.lastNACK = &NACK{Type: name, Version: ts.inflight.cur.version, Error: errDetail.Message(), At: time.Now()}
		st.s.metrics.nacks.WithLabelValues(name).Inc()
		st.s.log.Warn("proxy rejected configuration", "proxy", p.id, "type", name, "version", ts.inflight.cur.version, "error", errDetail.Message())
	} else {
		ts.held, ts.heldSub, ts.nacked, ts.initial = ts.inflight.cur, ts.inflight.sub, nil, nil
		v := ts.held.version
		p.acked[ts.url] = v
		if pp, ok := p.pending[ts.url]; ok && pp.version == v {
			st.s.metrics.pushLatency.Observe(time.Since(pp.since).Seconds())
			delete(p.pending, ts.url)
		}
	}
	ts.inflight = nil
}

func (st *adsStream) handleSotW(req *sotwRequest) error {
	ts, first := st.state(req.typeURL)
	if ts == nil {
		return nil // a type this server does not serve: never answered
	}
	if n := req.nonce; n != "" && ts.lastNonce != "" && n != ts.lastNonce {
		return nil // stale: the client has not seen the latest response yet
	}
	var detail *status.Status
	if req.errorDetail != nil {
		detail = status.FromProto(req.errorDetail)
	}
	st.ack(ts, req.nonce, detail)

	star := req.star()
	wildcard := star || req.key.n == 0 && legacyWildcard(ts.url) && (first || ts.sub.wildcard)
	if !star && wildcard == ts.sub.wildcard && req.key == ts.namesKey {
		return nil // the names of the last request
	}
	names := req.nameStrings()
	set := make(map[string]struct{}, len(names))
	for _, n := range names {
		if n != "*" {
			set[n] = struct{}{}
		}
	}
	ts.setSub(st.s.names, subscription{wildcard: wildcard, names: st.s.names.intern(set)})
	ts.namesKey = req.key
	if ts.url == resourcev3.ListenerType && st.p.spec.Kind == translate.KindGRPC && len(names) > 0 {
		// A state-of-the-world request names everything the stream wants.
		asked := make(map[string]struct{}, len(names))
		for _, n := range names {
			asked[n] = struct{}{}
		}
		st.p.asked[st.id] = asked
		st.s.updateListeners(st.p)
	}
	return nil
}

func (st *adsStream) handleDelta(req *discoverypb.DeltaDiscoveryRequest) error {
	ts, first := st.state(req.GetTypeUrl())
	if ts == nil {
		return nil
	}
	var detail *status.Status
	if req.GetErrorDetail() != nil {
		detail = status.FromProto(req.GetErrorDetail())
	}
	st.ack(ts, req.GetResponseNonce(), detail)

	subs, unsubs := req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()
	wildcard := ts.sub.wildcard
	if first {
		wildcard = len(subs) == 0 && legacyWildcard(ts.url)
		if iv := req.GetInitialResourceVersions(); len(iv) > 0 {
			ts.initial = iv
		}
	}
	if first || len(subs)+len(unsubs) > 0 {
		set := make(map[string]struct{}, ts.sub.names.len()+len(subs))
		if ts.sub.names != nil {
			for n := range ts.sub.names.names {
				set[n] = struct{}{}
			}
		}
		for _, n := range subs {
			if n == "*" {
				wildcard = true
			} else {
				set[n] = struct{}{}
			}
		}
		for _, n := range unsubs {
			if n == "*" {
				wildcard = false
			} else {
				delete(set, n)
			}
		}
		ts.setSub(st.s.names, subscription{wildcard: wildcard, names: st.s.names.intern(set)})
	}
	if ts.url == resourcev3.ListenerType && st.p.spec.Kind == translate.KindGRPC && len(subs)+len(unsubs) > 0 {
		asked := make(map[string]struct{}, ts.sub.names.len())
		if ts.sub.names != nil {
			for n := range ts.sub.names.names {
				asked[n] = struct{}{}
			}
		}
		st.p.asked[st.id] = asked
		st.s.updateListeners(st.p)
	}
	return nil
}

// updateListeners sets a gRPC proxy's listeners to the union of what its
// streams asked for, and rebuilds it when that changed. s.mu must be held.
func (s *Server) updateListeners(p *proxy) {
	var names []string
	for _, asked := range p.asked {
		for n := range asked {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return // no stream has named any: keep what the proxy has
	}
	if p.setListeners(names) {
		s.rebuildLocked(p, s.partsLocked(), time.Now())
	}
}

// flush sends, type by type, what the client lacks.
func (st *adsStream) flush() error {
	var cur [8]*typeSet
	st.s.mu.Lock()
	if p := st.p; p != nil && p.built != nil {
		for i, t := range typeURLs {
			cur[i] = p.built.sets[t]
		}
	}
	st.s.mu.Unlock()
	for i, ts := range st.types {
		if ts == nil || cur[i] == nil {
			continue
		}
		if err := st.respond(ts, cur[i]); err != nil {
			return err
		}
	}
	return nil
}

// respond sends ts's client what it lacks of cur, unless a response is in
// flight or there is nothing to send.
func (st *adsStream) respond(ts *typeState, cur *typeSet) error {
	if ts.inflight != nil {
		return nil
	}
	// Sets are compared by version (derived from their content): a proxy
	// rebuilt for a change of another type gets new sets with the same
	// versions for this one.
	if n := ts.nacked; n != nil && n.cur.version == cur.version && n.sub == ts.sub {
		return nil // rejected as it stands: wait for a change
	}
	if ts.answered && ts.held != nil && ts.held.version == cur.version && ts.heldSub == ts.sub {
		ts.held = cur
		return nil
	}
	k := bodyKey{delta: st.delta, typeURL: ts.url, cur: cur, sub: ts.sub}
	if !st.delta && cachev3.ResourceRequiresFullStateInSotw(ts.url) {
		k.full = true // the whole state, whatever the client holds
	} else {
		k.held, k.heldSub = ts.held, ts.heldSub
		// A first request is answered even with nothing: a state-of-the-world
		// client (and a delta one asking for everything) then knows there
		// is nothing for it.
		k.must = !ts.answered && (!st.delta || ts.sub.wildcard)
	}
	body, err := st.s.bodies.get(k, ts.initial)
	if err != nil {
		return status.Errorf(codes.Internal, "xds: encode %s response: %v", typeNames[ts.url], err)
	}
	ts.answered = true
	if body == nil {
		// The client holds all it subscribed to at these versions.
		ts.held, ts.heldSub, ts.initial = cur, ts.sub, nil
		return nil
	}
	st.nonces++
	nonce := strconv.FormatUint(st.nonces, 10)
	ts.inflight = &sent{cur: cur, sub: ts.sub, nonce: nonce}
	ts.lastNonce = nonce
	return st.gs.SendMsg(&frame{body: body, nonce: nonce})
}
