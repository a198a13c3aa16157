package telemetry

import (
	"cmp"
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The service graph: services (with their namespace and the versions seen)
// and the edges between them, each with its requests, errors, latency
// quantiles and share of mutual TLS over a sliding window of up to
// MaxWindow, kept in slots of SlotWidth.
//
// A request between two sidecars is reported twice, by the caller's sidecar
// (reporter = source) and by the callee's (destination). The graph counts
// each once: source reports always, destination reports only when the
// caller does not report the request itself (attributor.callerReports,
// docs/telemetry.md "Service graph"): a proxyless gRPC client, or a caller
// from outside the mesh, drawn from "unknown".

// Window parameters.
const (
	SlotWidth = 10 * time.Second
	numSlots  = 91 // MaxWindow of full slots, plus the current one
	MaxWindow = (numSlots - 1) * SlotWidth
)

// latencyBounds are the graph's latency buckets, in milliseconds: from
// 0.25 ms, each √2 times the previous (about ±20% on a quantile).
var latencyBounds = func() []float64 {
	b := make([]float64, 44)
	for i := range b {
		b[i] = 0.25 * math.Pow(math.Sqrt2, float64(i))
	}
	return b
}()

const graphShards = 16

// UnknownNode is the node of callers that cannot be told.
const UnknownNode = Unknown

type serviceKey struct{ Namespace, Service string }

func (k serviceKey) id() string {
	if k.Service == Unknown && k.Namespace == Unknown {
		return UnknownNode
	}
	return k.Namespace + "/" + k.Service
}

type edgeKey struct {
	src, dst serviceKey
	proto    string
}

// slotStats are one edge's numbers in one slot.
type slotStats struct {
	slot                   int64
	requests, errors, mtls uint64
	connections, bytes     uint64
	latency                [45]uint32 // len(latencyBounds)+1
}

type edge struct {
	key      edgeKey
	lastSlot int64
	slots    [numSlots]*slotStats
}

type nodeInfo struct {
	versions map[string]int64 // version → last slot seen
	lastSlot int64
}

type graphShard struct {
	mu    sync.Mutex
	edges map[edgeKey]*edge
}

// Graph aggregates reports into the service graph.
type Graph struct {
	seed     maphash.Seed
	shards   [graphShards]graphShard
	maxEdges int

	nodeMu sync.Mutex
	nodes  map[serviceKey]*nodeInfo

	dropped atomic.Uint64
	now     func() time.Time
}

// reportingSet is what attribution asks the ALS server: whether a
// workload, or an address, has an access log stream open.
type reportingSet interface {
	workloadReporting(ns, svc string) bool
	addrReporting(ip string) bool
}

func newGraph(maxEdges int) *Graph {
	g := &Graph{seed: maphash.MakeSeed(), maxEdges: maxEdges, nodes: map[serviceKey]*nodeInfo{}, now: time.Now}
	for i := range g.shards {
		g.shards[i].edges = map[edgeKey]*edge{}
	}
	return g
}

func slotOf(t time.Time) int64 { return t.UnixNano() / int64(SlotWidth) }

// observe adds a report to the graph.
func (g *Graph) observe(r *report) {
	if r.intermediate || (r.kind == kindTCP && !r.closed) {
		return
	}
	at := r.at
	if at.IsZero() {
		at = g.now()
	}
	if r.inbound && !g.countInbound(r) {
		g.seen(r.dst, slotOf(at))
		return
	}
	k := edgeKey{src: serviceKey{r.src.Namespace, r.src.Service}, dst: serviceKey{r.dst.Namespace, r.dst.Service}, proto: r.labels[lProtocol]}
	now := slotOf(at)
	var h maphash.Hash
	h.SetSeed(g.seed)
	h.WriteString(k.src.Namespace)
	h.WriteString(k.src.Service)
	h.WriteString(k.dst.Namespace)
	h.WriteString(k.dst.Service)
	sh := &g.shards[h.Sum64()%graphShards]
	sh.mu.Lock()
	e := sh.edges[k]
	if e == nil {
		if len(sh.edges) >= max(1, g.maxEdges/graphShards) {
			sh.evictIdle(now)
			if len(sh.edges) >= max(1, g.maxEdges/graphShards) {
				sh.mu.Unlock()
				g.dropped.Add(1)
				return
			}
		}
		e = &edge{key: k}
		sh.edges[k] = e
	}
	e.lastSlot = now
	i := now % numSlots
	st := e.slots[i]
	if st == nil {
		st = &slotStats{slot: now}
		e.slots[i] = st
	} else if st.slot != now {
		*st = slotStats{slot: now}
	}
	switch r.kind {
	case kindHTTP:
		st.requests++
		if r.isError {
			st.errors++
		}
		if r.mtls {
			st.mtls++
		}
		st.latency[bucketIndex(latencyBounds, r.durationMs)]++
	case kindTCP:
		st.connections++
		st.bytes += r.sent + r.received
		if r.mtls {
			st.mtls++
		}
		if r.isError {
			st.errors++
		}
	}
	sh.mu.Unlock()
	g.seen(r.src, now)
	g.seen(r.dst, now)
}

// countInbound decides whether a destination report is counted
// (attributor.callerReports).
func (g *Graph) countInbound(r *report) bool { return r.countAtDestination }

func (g *Graph) seen(w workload, slot int64) {
	if w.Service == Unknown && w.Namespace == Unknown {
		return
	}
	k := serviceKey{w.Namespace, w.Service}
	g.nodeMu.Lock()
	defer g.nodeMu.Unlock()
	n := g.nodes[k]
	if n == nil {
		if len(g.nodes) >= g.maxEdges {
			return
		}
		n = &nodeInfo{versions: map[string]int64{}}
		g.nodes[k] = n
	}
	n.lastSlot = slot
	if w.Version != Unknown && (len(n.versions) < 32 || n.versions[w.Version] != 0) {
		n.versions[w.Version] = slot
	}
}

// evictIdle drops the edges with no report in the whole window.
func (sh *graphShard) evictIdle(now int64) {
	for k, e := range sh.edges {
		if e.lastSlot <= now-numSlots {
			delete(sh.edges, k)
		}
	}
}

// sweep forgets edges and nodes outside the window.
func (g *Graph) sweep() {
	now := slotOf(g.now())
	for i := range g.shards {
		sh := &g.shards[i]
		sh.mu.Lock()
		sh.evictIdle(now)
		sh.mu.Unlock()
	}
	g.nodeMu.Lock()
	for k, n := range g.nodes {
		if n.lastSlot <= now-numSlots {
			delete(g.nodes, k)
			continue
		}
		for v, s := range n.versions {
			if s <= now-numSlots {
				delete(n.versions, v)
			}
		}
	}
	g.nodeMu.Unlock()
}

// GraphNode is a service in the graph.
type GraphNode struct {
	ID        string   `json:"id"`
	Namespace string   `json:"namespace"`
	Service   string   `json:"service"`
	Version   string   `json:"version"`
	Versions  []string `json:"versions"`
}

// GraphEdge is traffic from one service to another over the window.
type GraphEdge struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Protocol    string `json:"protocol"`
	// HTTP and gRPC: requests, errors (5xx, no response, gRPC status other
	// than OK), per second, their ratio and latency quantiles.
	Requests   uint64  `json:"requests"`
	Errors     uint64  `json:"errors"`
	Rate       float64 `json:"rate"`
	ErrorRate  float64 `json:"error_rate"`
	ErrorRatio float64 `json:"error_ratio"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	// MTLS is the share of requests (connections) made over mutual TLS.
	MTLS float64 `json:"mtls"`
	// TCP: connections closed and bytes both ways.
	Connections    uint64  `json:"connections,omitempty"`
	BytesPerSecond float64 `json:"bytes_per_second,omitempty"`
}

// GraphView is GET /v1/graph.
type GraphView struct {
	Time          time.Time   `json:"time"`
	WindowSeconds float64     `json:"window_seconds"`
	Nodes         []GraphNode `json:"nodes"`
	Edges         []GraphEdge `json:"edges"`
}

// totals sums an edge's slots in [from, to].
func (e *edge) totals(from, to int64) (t slotStats) {
	for _, st := range e.slots {
		if st == nil || st.slot < from || st.slot > to {
			continue
		}
		t.requests += st.requests
		t.errors += st.errors
		t.mtls += st.mtls
		t.connections += st.connections
		t.bytes += st.bytes
		for i, n := range st.latency {
			t.latency[i] += n
		}
	}
	return t
}

// window turns a requested window into slots: the last n full slots and
// the current one.
func (g *Graph) window(w time.Duration) (from, to int64, seconds float64) {
	w = min(max(w, SlotWidth), MaxWindow)
	n := int64(w / SlotWidth)
	now := g.now()
	to = slotOf(now)
	from = to - n
	// The current slot is partial: count it for the time it has lasted.
	partial := float64(now.UnixNano()%int64(SlotWidth)) / 1e9
	return from, to, float64(n)*SlotWidth.Seconds() + partial
}

// View computes the graph over a window.
func (g *Graph) View(w time.Duration) GraphView {
	from, to, secs := g.window(w)
	v := GraphView{Time: g.now().UTC(), WindowSeconds: secs, Nodes: []GraphNode{}, Edges: []GraphEdge{}}
	used := map[serviceKey]bool{}
	for i := range g.shards {
		sh := &g.shards[i]
		sh.mu.Lock()
		for _, e := range sh.edges {
			if e.lastSlot < from {
				continue
			}
			t := e.totals(from, to)
			if t.requests+t.connections == 0 {
				continue
			}
			v.Edges = append(v.Edges, edgeView(e.key, &t, secs))
			used[e.key.src], used[e.key.dst] = true, true
		}
		sh.mu.Unlock()
	}
	g.nodeMu.Lock()
	for k, n := range g.nodes {
		if n.lastSlot >= from {
			used[k] = true
		}
	}
	for k := range used {
		node := GraphNode{ID: k.id(), Namespace: k.Namespace, Service: k.Service, Versions: []string{}}
		if n := g.nodes[k]; n != nil {
			for ver, s := range n.versions {
				if s >= from {
					node.Versions = append(node.Versions, ver)
				}
			}
		}
		slices.Sort(node.Versions)
		node.Version = Unknown
		if len(node.Versions) > 0 {
			node.Version = strings.Join(node.Versions, ",")
		}
		v.Nodes = append(v.Nodes, node)
	}
	g.nodeMu.Unlock()
	slices.SortFunc(v.Nodes, func(a, b GraphNode) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(v.Edges, func(a, b GraphEdge) int {
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.Destination, b.Destination), cmp.Compare(a.Protocol, b.Protocol))
	})
	return v
}

func edgeView(k edgeKey, t *slotStats, secs float64) GraphEdge {
	e := GraphEdge{Source: k.src.id(), Destination: k.dst.id(), Protocol: k.proto,
		Requests: t.requests, Errors: t.errors, Connections: t.connections}
	n := t.requests
	if k.proto == protoTCP {
		n = t.connections
		e.BytesPerSecond = round(float64(t.bytes)/secs, 3)
	}
	e.Rate = round(float64(t.requests)/secs, 3)
	e.ErrorRate = round(float64(t.errors)/secs, 3)
	if n > 0 {
		e.ErrorRatio = round(float64(t.errors)/float64(n), 4)
		e.MTLS = round(float64(t.mtls)/float64(n), 4)
	}
	if t.requests > 0 {
		e.P50Ms = round(quantile(t.latency[:], 0.5), 3)
		e.P99Ms = round(quantile(t.latency[:], 0.99), 3)
	}
	return e
}

// quantile estimates a quantile from the latency buckets, interpolating
// within the bucket that holds it.
func quantile(buckets []uint32, q float64) float64 {
	var total uint64
	for _, n := range buckets {
		total += uint64(n)
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var cum float64
	for i, n := range buckets {
		if n == 0 {
			continue
		}
		if cum+float64(n) >= rank {
			lo := 0.0
			if i > 0 {
				lo = latencyBounds[i-1]
			}
			hi := latencyBounds[min(i, len(latencyBounds)-1)]
			if i == len(latencyBounds) { // above the last bound
				return hi
			}
			return lo + (hi-lo)*(rank-cum)/float64(n)
		}
		cum += float64(n)
	}
	return latencyBounds[len(latencyBounds)-1]
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// ServiceSignals are a service's golden signals as its callers see them
// (the edges into it): over the window, and per slot.
type ServiceSignals struct {
	ID         string        `json:"id"`
	Namespace  string        `json:"namespace"`
	Service    string        `json:"service"`
	Requests   uint64        `json:"requests"`
	Rate       float64       `json:"rate"`
	ErrorRatio float64       `json:"error_ratio"`
	P50Ms      float64       `json:"p50_ms"`
	P99Ms      float64       `json:"p99_ms"`
	Points     []SignalPoint `json:"points"`
}

// SignalPoint is one slot of a service's signals.
type SignalPoint struct {
	Time       time.Time `json:"t"`
	Rate       float64   `json:"rate"`
	ErrorRatio float64   `json:"error_ratio"`
	P99Ms      float64   `json:"p99_ms"`
}

// Signals computes every service's golden signals over a window.
func (g *Graph) Signals(w time.Duration) []ServiceSignals {
	from, to, secs := g.window(w)
	type agg struct {
		total slotStats
		slots map[int64]*slotStats
	}
	by := map[serviceKey]*agg{}
	for i := range g.shards {
		sh := &g.shards[i]
		sh.mu.Lock()
		for _, e := range sh.edges {
			if e.lastSlot < from || e.key.proto == protoTCP {
				continue
			}
			a := by[e.key.dst]
			if a == nil {
				a = &agg{slots: map[int64]*slotStats{}}
				by[e.key.dst] = a
			}
			for _, st := range e.slots {
				if st == nil || st.slot < from || st.slot > to || st.requests == 0 {
					continue
				}
				p := a.slots[st.slot]
				if p == nil {
					p = &slotStats{slot: st.slot}
					a.slots[st.slot] = p
				}
				for _, x := range []*slotStats{p, &a.total} {
					x.requests += st.requests
					x.errors += st.errors
					for j, n := range st.latency {
						x.latency[j] += n
					}
				}
			}
		}
		sh.mu.Unlock()
	}
	out := []ServiceSignals{}
	nowSecs := float64(g.now().UnixNano()%int64(SlotWidth)) / 1e9
	for k, a := range by {
		if a.total.requests == 0 {
			continue
		}
		s := ServiceSignals{ID: k.id(), Namespace: k.Namespace, Service: k.Service, Requests: a.total.requests,
			Rate:       round(float64(a.total.requests)/secs, 3),
			ErrorRatio: round(float64(a.total.errors)/float64(a.total.requests), 4),
			P50Ms:      round(quantile(a.total.latency[:], 0.5), 3),
			P99Ms:      round(quantile(a.total.latency[:], 0.99), 3),
			Points:     []SignalPoint{}}
		for slot := from; slot <= to; slot++ {
			p := SignalPoint{Time: time.Unix(0, slot*int64(SlotWidth)).UTC()}
			width := SlotWidth.Seconds()
			if slot == to {
				width = max(nowSecs, 1)
			}
			if st := a.slots[slot]; st != nil {
				p.Rate = round(float64(st.requests)/width, 3)
				p.ErrorRatio = round(float64(st.errors)/float64(st.requests), 4)
				p.P99Ms = round(quantile(st.latency[:], 0.99), 3)
			}
			s.Points = append(s.Points, p)
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b ServiceSignals) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Dropped is the number of reports the graph left out because it held its
// most edges.
func (g *Graph) Dropped() uint64 { return g.dropped.Load() }
