// Package nomadtest is a test double of Nomad's HTTP API, as far as a
// discovery adapter uses it: the service catalog (GET /v1/services,
// GET /v1/service/<name>, blocking queries with index and wait, X-Nomad-Index),
// the event stream (GET /v1/event/stream, newline-delimited JSON, `{}`
// heartbeats, replay from an index, Service and Allocation topics),
// allocations (GET /v1/allocation/<id>, with the job spec inside), nodes
// (GET /v1/node/<id>) and the keyring's public keys
// (GET /.well-known/jwks.json), with MintIdentity to sign workload
// identities (identity.go).
//
// Its responses are built from responses captured from a real Nomad agent
// (testdata/, see its README): the captured documents are the templates, so
// every response has exactly their fields. Nodes and Allocation events were
// not captured; they follow Nomad's API documentation.
//
// Tests drive it like a cluster: SubmitJob, StartAlloc (a placement, which
// registers the allocation's services), StopAlloc, StopJob, and a job update
// that Nomad applies in place (new meta in the running allocations, no new
// registration). They break it too: DropStreams cuts the event streams
// mid-way, Stall silences them, Down refuses connections until Up, and
// Restart brings Nomad back with a new Raft index.
package nomadtest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options configure a Server.
type Options struct {
	// Index is the Raft index the cluster starts at (default 10).
	Index uint64
	// HeartbeatInterval is the time between `{}` lines on an idle event
	// stream (default 10s, Nomad's).
	HeartbeatInterval time.Duration
	// EventBuffer is how many event frames the server keeps for replay
	// (default 100, Nomad's event_buffer_size).
	EventBuffer int
	// NoEventStream answers the event stream with 404, like an agent that
	// does not offer it.
	NoEventStream bool
	// Token, when set, is the only ACL token accepted (X-Nomad-Token);
	// other requests get 403.
	Token string
	// TLS, when set, serves HTTPS with the files' server certificate.
	TLS *TLSOptions
}

// TLSOptions configure HTTPS.
type TLSOptions struct {
	Files TLSFiles
	// RequireClientCert refuses clients without a certificate signed by
	// the CA.
	RequireClientCert bool
}

// Server is a running double of a Nomad agent. Its methods are safe for
// concurrent use.
type Server struct {
	t    testing.TB
	opts Options
	addr string
	tls  *tls.Config

	mu       sync.Mutex
	hs       *http.Server
	up       bool
	index    uint64 // the Raft index
	svcIndex uint64 // index of the last change to service registrations
	changed  chan struct{}
	jobs     map[string]*job // by namespace + "/" + ID
	allocs   map[string]*alloc
	regs     map[string]*registration // by ID
	nodes    map[string]Node
	buffer   []bufferedFrame
	subs     map[int]*subscriber
	nextSub  int
	nextID   uint64
	stalled  bool
	requests map[string]int
	streams  int
	hook     func(*http.Request)
}

// Start starts a double on a free loopback port; it stops when the test
// ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	if o.Index == 0 {
		o.Index = 10
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = 10 * time.Second
	}
	if o.EventBuffer == 0 {
		o.EventBuffer = 100
	}
	s := &Server{
		t: t, opts: o, addr: "127.0.0.1:0",
		index: o.Index, svcIndex: o.Index, changed: make(chan struct{}),
		jobs: map[string]*job{}, allocs: map[string]*alloc{}, regs: map[string]*registration{},
		nodes: map[string]Node{}, subs: map[int]*subscriber{}, requests: map[string]int{},
	}
	if o.TLS != nil {
		cfg, err := o.TLS.Files.serverConfig(o.TLS.RequireClientCert)
		if err != nil {
			t.Fatalf("nomadtest: %v", err)
		}
		s.tls = cfg
	}
	s.AddNode(DefaultNode)
	if err := s.listen(); err != nil {
		t.Fatalf("nomadtest: %v", err)
	}
	t.Cleanup(s.Down)
	return s
}

// URL is the agent's address, as Nomad's `address` setting takes it.
func (s *Server) URL() string {
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
	}
	return scheme + "://" + s.addr
}

func (s *Server) listen() error {
	var l net.Listener
	var err error
	for range 50 { // the port may take a moment to be free again
		if l, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.addr, err)
	}
	if s.tls != nil {
		l = tls.NewListener(l, s.tls)
	}
	s.mu.Lock()
	s.addr = l.Addr().String()
	s.hs = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	s.up = true
	hs := s.hs
	s.mu.Unlock()
	go func() { _ = hs.Serve(l) }()
	return nil
}

// Down stops answering: the listener and every connection close, and new
// connections are refused until Up.
func (s *Server) Down() {
	s.mu.Lock()
	hs := s.hs
	s.up = false
	s.hs = nil
	for id, sub := range s.subs {
		sub.cut()
		delete(s.subs, id)
	}
	s.mu.Unlock()
	if hs != nil {
		_ = hs.Close()
	}
}

// Up answers again on the same address, with the state it had.
func (s *Server) Up() {
	s.t.Helper()
	s.mu.Lock()
	up := s.up
	s.mu.Unlock()
	if up {
		return
	}
	if err := s.listen(); err != nil {
		s.t.Fatalf("nomadtest: %v", err)
	}
}

// Restart stops the agent and brings it back at a new Raft index (lower or
// higher than before), as a cluster restored from a snapshot or built again
// would: every registration and allocation is indexed anew, and the event
// buffer is empty.
func (s *Server) Restart(index uint64) {
	s.Down()
	s.mu.Lock()
	s.index, s.svcIndex = index, index
	s.buffer = nil
	for _, r := range s.regs {
		r.CreateIndex, r.ModifyIndex = index, index
	}
	for _, a := range s.allocs {
		a.createIndex, a.modifyIndex, a.allocModifyIndex = index, index, index
	}
	s.bumpLocked()
	s.mu.Unlock()
	s.Up()
}

// DropStreams cuts every open event stream mid-way, without a clean end,
// and returns how many it cut.
func (s *Server) DropStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.subs)
	for id, sub := range s.subs {
		sub.cut()
		delete(s.subs, id)
	}
	return n
}

// Stall makes the event streams go silent (no events, no heartbeats) while
// their connections stay open, until Stall(false).
func (s *Server) Stall(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stalled = on
}

// Requests returns how many requests were made to paths starting with
// prefix (for example "/v1/allocation/").
func (s *Server) Requests(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p, c := range s.requests {
		if strings.HasPrefix(p, prefix) {
			n += c
		}
	}
	return n
}

// StreamsOpened returns how many event streams were opened.
func (s *Server) StreamsOpened() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// OpenStreams returns how many event streams are open now.
func (s *Server) OpenStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs)
}

// Index returns the current Raft index.
func (s *Server) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

// OnRequest sets a function called with each request before it is answered
// (nil removes it); tests use it to change the cluster at a precise point of
// a client's sequence of requests.
func (s *Server) OnRequest(f func(*http.Request)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = f
}

// ServeHTTP answers the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests[r.URL.Path]++
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		hook(r)
	}
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "Invalid method")
		return
	}
	if r.URL.Path == JWKSPath { // public, as Nomad serves it (identity.go)
		s.serveJWKS(w)
		return
	}
	if s.opts.Token != "" && r.Header.Get("X-Nomad-Token") != s.opts.Token {
		writeError(w, http.StatusForbidden, "Permission denied")
		return
	}
	path := r.URL.Path
	switch {
	case path == "/v1/services":
		s.blocking(w, r, s.listServices)
	case strings.HasPrefix(path, "/v1/service/"):
		name := strings.TrimPrefix(path, "/v1/service/")
		s.blocking(w, r, func(ns string) any { return s.serviceRegs(ns, name) })
	case strings.HasPrefix(path, "/v1/allocation/"):
		s.getAlloc(w, strings.TrimPrefix(path, "/v1/allocation/"))
	case strings.HasPrefix(path, "/v1/node/"):
		s.getNode(w, strings.TrimPrefix(path, "/v1/node/"))
	case path == "/v1/event/stream":
		if s.opts.NoEventStream {
			writeError(w, http.StatusNotFound, "Invalid URL")
			return
		}
		s.eventStream(w, r)
	default:
		writeError(w, http.StatusNotFound, "Invalid URL")
	}
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

// writeJSON answers with the headers Nomad sets (services.headers).
func writeJSON(w http.ResponseWriter, index uint64, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Vary", "Accept-Encoding")
	h.Set("X-Nomad-Index", strconv.FormatUint(index, 10))
	h.Set("X-Nomad-Knownleader", "true")
	h.Set("X-Nomad-Lastcontact", "0")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// namespaceParam is the request's namespace ("default" when absent).
func namespaceParam(r *http.Request) string {
	if ns := r.URL.Query().Get("namespace"); ns != "" {
		return ns
	}
	return "default"
}

// blocking answers a query on the service registrations, blocking while the
// request's index is not below the registrations' index (at most the
// request's wait, default 5m, as Nomad does).
func (s *Server) blocking(w http.ResponseWriter, r *http.Request, body func(ns string) any) {
	q := r.URL.Query()
	var index uint64
	if v := q.Get("index"); v != "" {
		i, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "Invalid index")
			return
		}
		index = i
	}
	wait := 5 * time.Minute
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "Invalid wait time")
			return
		}
		wait = min(d, 10*time.Minute)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	ns := namespaceParam(r)
	for {
		s.mu.Lock()
		cur, changed := s.svcIndex, s.changed
		if index == 0 || cur > index {
			v := body(ns)
			s.mu.Unlock()
			writeJSON(w, cur, v)
			return
		}
		s.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			s.mu.Lock()
			v := body(ns)
			cur = s.svcIndex
			s.mu.Unlock()
			writeJSON(w, cur, v)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// bumpLocked wakes the blocking queries.
func (s *Server) bumpLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// listServices is GET /v1/services (s.mu held): one entry per namespace
// with registrations, services in the order of their registrations' IDs,
// tags merged.
func (s *Server) listServices(ns string) any {
	type stub struct {
		ServiceName string
		Tags        []string
	}
	type entry struct {
		Namespace string
		Services  []*stub
	}
	byNS := map[string]*entry{}
	seen := map[string]*stub{}
	for _, id := range slices.Sorted(maps.Keys(s.regs)) {
		r := s.regs[id]
		if ns != "*" && r.Namespace != ns {
			continue
		}
		e := byNS[r.Namespace]
		if e == nil {
			e = &entry{Namespace: r.Namespace, Services: []*stub{}}
			byNS[r.Namespace] = e
		}
		key := r.Namespace + "/" + r.ServiceName
		st := seen[key]
		if st == nil {
			st = &stub{ServiceName: r.ServiceName, Tags: []string{}}
			seen[key] = st
			e.Services = append(e.Services, st)
		}
		for _, t := range r.Tags {
			if !slices.Contains(st.Tags, t) {
				st.Tags = append(st.Tags, t)
			}
		}
		slices.Sort(st.Tags)
	}
	out := []*entry{}
	for _, k := range slices.Sorted(maps.Keys(byNS)) {
		out = append(out, byNS[k])
	}
	return out
}

// serviceRegs is GET /v1/service/<name> (s.mu held).
func (s *Server) serviceRegs(ns, name string) any {
	out := []map[string]any{}
	for _, id := range slices.Sorted(maps.Keys(s.regs)) {
		if r := s.regs[id]; r.ServiceName == name && r.Namespace == ns {
			out = append(out, r.render())
		}
	}
	return out
}

func (s *Server) getAlloc(w http.ResponseWriter, id string) {
	s.mu.Lock()
	a, ok := s.allocs[id]
	var body map[string]any
	var index uint64
	if ok {
		body, index = s.renderAlloc(a, true), a.modifyIndex
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "alloc not found")
		return
	}
	writeJSON(w, index, body)
}

func (s *Server) getNode(w http.ResponseWriter, id string) {
	s.mu.Lock()
	n, ok := s.nodes[id]
	index := s.index
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "node not found")
		return
	}
	writeJSON(w, index, n.render())
}

// WaitStreams waits until n event streams are open, or ctx ends.
func (s *Server) WaitStreams(ctx context.Context, n int) error {
	for {
		if s.OpenStreams() >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("nomadtest: event streams did not open")
		case <-time.After(5 * time.Millisecond):
		}
	}
}
