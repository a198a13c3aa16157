package consul

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/test/consulagent"
)

const waitTimeout = 15 * time.Second

// countingTransport counts requests and the most requests outstanding at
// once per path.
type countingTransport struct {
	base     http.RoundTripper
	total    atomic.Int64
	refusals atomic.Int64 // 429 answers

	mu          sync.Mutex
	inflight    map[string]int
	maxInflight map[string]int
	all, maxAll int // outstanding requests, on every path
}

// newCountingTransport counts the requests base carries; a nil base is set
// by wrap.
func newCountingTransport(base http.RoundTripper) *countingTransport {
	return &countingTransport{base: base, inflight: map[string]int{}, maxInflight: map[string]int{}}
}

// wrap is a Config.WrapTransport.
func (c *countingTransport) wrap(base http.RoundTripper) http.RoundTripper {
	c.base = base
	return c
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.total.Add(1)
	path := req.URL.Path
	c.mu.Lock()
	c.inflight[path]++
	c.maxInflight[path] = max(c.maxInflight[path], c.inflight[path])
	c.all++
	c.maxAll = max(c.maxAll, c.all)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.inflight[path]--
		c.all--
		c.mu.Unlock()
	}()
	resp, err := c.base.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		c.refusals.Add(1)
	}
	return resp, err
}

// mostOutstandingOverall returns the highest number of requests outstanding
// at once.
func (c *countingTransport) mostOutstandingOverall() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxAll
}

// mostOutstanding returns the highest number of requests outstanding at once
// on one path under prefix, and that path.
func (c *countingTransport) mostOutstanding(prefix string) (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, at := 0, ""
	for p, m := range c.maxInflight {
		if strings.HasPrefix(p, prefix) && m > n {
			n, at = m, p
		}
	}
	return n, at
}

// recorder passes a source's states on and keeps them.
type recorder struct {
	discovery.Source
	mu     sync.Mutex
	states []discovery.State
}

func (r *recorder) Run(ctx context.Context, updates chan<- discovery.State) error {
	ch := make(chan discovery.State)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for st := range ch {
			r.mu.Lock()
			r.states = append(r.states, st)
			r.mu.Unlock()
			select {
			case updates <- st:
			case <-ctx.Done():
			}
		}
	}()
	err := r.Source.Run(ctx, ch)
	close(ch)
	<-done
	return err
}

func (r *recorder) recorded() []discovery.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.states)
}

// harness runs a Consul source in a real catalog and records every state
// the source sends and every snapshot the catalog publishes.
type harness struct {
	t         *testing.T
	cat       *discovery.Catalog
	rec       *recorder
	transport *countingTransport

	mu      sync.Mutex
	snaps   []*discovery.Snapshot
	arrived []time.Time
	changed chan struct{} // closed and replaced on each snapshot
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func newHarness(t *testing.T, address string, tune func(*Config)) *harness {
	return newHarnessSource(t, address, tune, nil)
}

// newHarnessSource is newHarness with a hook on the source.
func newHarnessSource(t *testing.T, address string, tune func(*Config), tuneSource func(*Source)) *harness {
	t.Helper()
	h := &harness{t: t, transport: newCountingTransport(nil), changed: make(chan struct{})}
	cfg := Config{
		Address:       address,
		TrustDomain:   "bowline.test",
		WrapTransport: h.transport.wrap,
		MinBackoff:    100 * time.Millisecond,
		MaxBackoff:    time.Second,
	}
	if tune != nil {
		tune(&cfg)
	}
	log := testLogger(t)
	src, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if tuneSource != nil {
		tuneSource(src)
	}
	h.rec = &recorder{Source: src}
	h.cat = discovery.NewCatalog(log, discovery.Options{})
	snaps, unsubscribe := h.cat.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			select {
			case s := <-snaps:
				h.mu.Lock()
				h.snaps = append(h.snaps, s)
				h.arrived = append(h.arrived, time.Now())
				close(h.changed)
				h.changed = make(chan struct{})
				h.mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()
	errc := make(chan error, 1)
	go func() { errc <- h.cat.Run(ctx, h.rec) }()
	t.Cleanup(func() {
		cancel()
		unsubscribe()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("catalog.Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("catalog.Run did not return after cancel")
		}
	})
	return h
}

// waitSnapshot waits for a snapshot satisfying cond and returns it with the
// time it was published.
func (h *harness) waitSnapshot(what string, cond func(*discovery.Snapshot) bool) (*discovery.Snapshot, time.Time) {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		h.mu.Lock()
		var last *discovery.Snapshot
		var at time.Time
		if n := len(h.snaps); n > 0 {
			last, at = h.snaps[n-1], h.arrived[n-1]
		}
		changed := h.changed
		h.mu.Unlock()
		if last != nil && cond(last) {
			return last, at
		}
		select {
		case <-changed:
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s; last snapshot: %s", what, describe(last))
		}
	}
}

// waitStatus waits until the consul source's status satisfies cond.
func (h *harness) waitStatus(what string, cond func(discovery.SourceStatus) bool) discovery.SourceStatus {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		for _, st := range h.cat.Sources() {
			if st.Name == "consul" && cond(st) {
				return st
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; sources: %+v", what, h.cat.Sources())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) snapshots() []*discovery.Snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.snaps)
}

func describe(s *discovery.Snapshot) string {
	if s == nil {
		return "none"
	}
	var b strings.Builder
	for _, svc := range s.Services() {
		fmt.Fprintf(&b, "\n  %s %s upstreams=%v", svc.ServiceKey, svc.Protocol, svc.Upstreams)
		for _, e := range svc.Endpoints {
			fmt.Fprintf(&b, "\n    %s:%d %s sidecar=%d labels=%v", e.Address, e.Port, e.Health, e.SidecarPort, e.Labels)
		}
	}
	return b.String()
}

func key(name string) discovery.ServiceKey {
	return discovery.ServiceKey{Namespace: discovery.DefaultNamespace, Name: name}
}

// endpointsOf returns the endpoints of a service by port.
func endpointsOf(s *discovery.Snapshot, name string) map[uint32]discovery.Endpoint {
	svc, ok := s.Service(key(name))
	if !ok {
		return nil
	}
	out := map[uint32]discovery.Endpoint{}
	for _, e := range svc.Endpoints {
		out[e.Port] = e
	}
	return out
}

func apiClient(t *testing.T, a *consulagent.Agent) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: a.Address()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func registerWeb(t *testing.T, c *api.Client, id string, port int) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: "web", Port: port, Tags: []string{"version=v1"}, Meta: map[string]string{"protocol": "http"},
		Check: &api.AgentServiceCheck{CheckID: id + "-ttl", TTL: "10m", Status: api.HealthPassing},
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
}

func TestSourceFollowsConsul(t *testing.T) {
	t.Parallel()
	agent := consulagent.Start(t)
	c := apiClient(t, agent)
	h := newHarness(t, agent.Address(), nil)

	snap, _ := h.waitSnapshot("first snapshot", func(*discovery.Snapshot) bool { return true })
	if snap.Len() != 0 {
		t.Fatalf("first snapshot has services (consul's own must be skipped): %s", describe(snap))
	}
	h.waitStatus("synced", func(s discovery.SourceStatus) bool { return s.Healthy && s.Synced })

	registerWeb(t, c, "web-1", 8001)
	snap, _ = h.waitSnapshot("web-1", func(s *discovery.Snapshot) bool { return len(endpointsOf(s, "web")) == 1 })
	svc, _ := snap.Service(key("web"))
	e := svc.Endpoints[0]
	if svc.Protocol != discovery.ProtocolHTTP || e.Address != "127.0.0.1" || e.Health != discovery.HealthHealthy ||
		e.Identity != "spiffe://bowline.test/ns/default/svc/web" || e.Region != consulagent.Datacenter || e.Zone != "zone-a" ||
		e.Labels["version"] != "v1" || e.Source != "consul" {
		t.Fatalf("web-1 converted wrongly: %s (identity %q, locality %+v, source %q)", describe(snap), e.Identity, e.Locality, e.Source)
	}

	// Scale up, then down.
	registerWeb(t, c, "web-2", 8002)
	registerWeb(t, c, "web-3", 8003)
	h.waitSnapshot("three web endpoints", func(s *discovery.Snapshot) bool { return len(endpointsOf(s, "web")) == 3 })
	if err := c.Agent().ServiceDeregister("web-3"); err != nil {
		t.Fatal(err)
	}
	h.waitSnapshot("web-3 gone", func(s *discovery.Snapshot) bool {
		eps := endpointsOf(s, "web")
		_, has3 := eps[8003]
		return len(eps) == 2 && !has3
	})

	// Health follows the TTL checks.
	healthOf := func(port uint32, want discovery.Health) func(*discovery.Snapshot) bool {
		return func(s *discovery.Snapshot) bool {
			e, ok := endpointsOf(s, "web")[port]
			return ok && e.Health == want
		}
	}
	if err := c.Agent().UpdateTTL("web-1-ttl", "down", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	h.waitSnapshot("web-1 unhealthy", healthOf(8001, discovery.HealthUnhealthy))
	if err := c.Agent().UpdateTTL("web-1-ttl", "up", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	h.waitSnapshot("web-1 healthy again", healthOf(8001, discovery.HealthHealthy))
	if err := c.Agent().UpdateTTL("web-2-ttl", "slow", api.HealthWarning); err != nil {
		t.Fatal(err)
	}
	h.waitSnapshot("web-2 degraded", healthOf(8002, discovery.HealthDegraded))

	// A Connect sidecar is folded into the instance it fronts.
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: "web-1-sidecar", Name: "web-sidecar-proxy", Port: 21001,
		Proxy: &api.AgentServiceConnectProxyConfig{
			DestinationServiceName: "web", DestinationServiceID: "web-1",
			Upstreams: []api.Upstream{{DestinationName: "api", LocalBindPort: 9191}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	snap, _ = h.waitSnapshot("web-1 sidecar", func(s *discovery.Snapshot) bool {
		svc, ok := s.Service(key("web"))
		return ok && endpointsOf(s, "web")[8001].SidecarPort == 21001 && len(svc.Upstreams) == 1
	})
	if _, ok := snap.Service(key("web-sidecar-proxy")); ok {
		t.Fatal("the sidecar proxy became a service of its own")
	}
	if sp := endpointsOf(snap, "web")[8002].SidecarPort; sp != 0 {
		t.Fatalf("web-2 got sidecar port %d of web-1's sidecar", sp)
	}

	// A second service with a sidecar port in its meta.
	err = c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "api-1", Name: "api", Port: 9000, Meta: map[string]string{"protocol": "grpc", "bowline-sidecar-port": "21002"},
	})
	if err != nil {
		t.Fatal(err)
	}
	snap, _ = h.waitSnapshot("api", func(s *discovery.Snapshot) bool { return len(endpointsOf(s, "api")) == 1 })
	if svc, _ := snap.Service(key("api")); svc.Protocol != discovery.ProtocolGRPC || svc.Endpoints[0].SidecarPort != 21002 {
		t.Fatalf("api converted wrongly: %s", describe(snap))
	}

	// Deregistering every instance removes the service.
	for _, id := range []string{"web-1-sidecar", "web-1", "web-2"} {
		if err := c.Agent().ServiceDeregister(id); err != nil {
			t.Fatal(err)
		}
	}
	h.waitSnapshot("web gone", func(s *discovery.Snapshot) bool {
		_, web := s.Service(key("web"))
		_, api := s.Service(key("api"))
		return !web && api
	})

	for i, st := range h.rec.recorded() {
		if st.Err != nil {
			t.Errorf("state %d reports an error while Consul was up: %v", i, st.Err)
		}
	}
	if n, path := h.transport.mostOutstanding("/v1/"); n > 1 {
		t.Errorf("%d requests outstanding at once on %s, want at most 1 per watch", n, path)
	}
}

func TestSourceFailStaticAcrossRestart(t *testing.T) {
	t.Parallel()
	agent := consulagent.Start(t)
	c := apiClient(t, agent)
	registerWeb(t, c, "web-1", 8001)
	registerWeb(t, c, "web-2", 8002)
	h := newHarness(t, agent.Address(), nil)
	h.waitSnapshot("web", func(s *discovery.Snapshot) bool { return len(endpointsOf(s, "web")) == 2 })
	h.waitStatus("healthy", func(s discovery.SourceStatus) bool { return s.Healthy })

	agent.Stop()
	st := h.waitStatus("source not healthy", func(s discovery.SourceStatus) bool { return !s.Healthy })
	if !strings.Contains(st.LastError, "consul: list services") {
		t.Errorf("last error = %q, want it to come from the catalog watch", st.LastError)
	}
	if !slices.ContainsFunc(h.rec.recorded(), func(s discovery.State) bool { return s.Err != nil && len(s.Services) == 0 }) {
		t.Fatal("no State with Err was sent")
	}
	if eps := endpointsOf(h.cat.Snapshot(), "web"); len(eps) != 2 {
		t.Fatalf("catalog lost web while Consul is down: %s", describe(h.cat.Snapshot()))
	}

	restarted := time.Now()
	agent.Restart()
	h.waitStatus("source healthy again", func(s discovery.SourceStatus) bool { return s.Healthy })
	t.Logf("source healthy %s after the restart began", time.Since(restarted).Round(time.Millisecond))

	// The watches work again: a change after the restart arrives.
	registerWeb(t, c, "web-3", 8003)
	h.waitSnapshot("web-3 after restart", func(s *discovery.Snapshot) bool { return len(endpointsOf(s, "web")) == 3 })

	seen := false
	for i, s := range h.snapshots() {
		n := len(endpointsOf(s, "web"))
		if n >= 2 {
			seen = true
		} else if seen {
			t.Errorf("snapshot %d (version %s) lost web endpoints: %s", i, s.Version, describe(s))
		}
	}
	seen = false
	errs := 0
	for i, st := range h.rec.recorded() {
		if st.Err != nil {
			errs++
			continue
		}
		has := slices.ContainsFunc(st.Services, func(s *discovery.Service) bool { return s.Name == "web" && len(s.Endpoints) >= 2 })
		if has {
			seen = true
		} else if seen {
			t.Errorf("state %d lacks web: the source emptied a service across the restart", i)
		}
	}
	// One outage, one error state; a shutting-down agent may answer a probe
	// or two in between, but retries must not send an error state each.
	if errs < 1 || errs > 3 {
		t.Errorf("%d error states sent for one outage, want 1 (3 at most)", errs)
	}
}

// TestSourceSnapshotRestore restores an older Consul snapshot under a running
// source: every index goes backwards with no error in between, and the
// watches must start over rather than wait for an index Consul will reach
// only much later. Consul does not end the health query for ext at all, and
// ends the catalog query only sometimes, so the catalog watch's capped wait
// (shortened here from a minute) is what notices the restore.
func TestSourceSnapshotRestore(t *testing.T) {
	t.Parallel()
	agent := consulagent.Start(t)
	c := apiClient(t, agent)
	// External registrations: the agent's anti-entropy would re-create its
	// own services after the restore.
	register := func(id string, port int) {
		t.Helper()
		_, err := c.Catalog().Register(&api.CatalogRegistration{
			Node: "ext-node", Address: "10.3.0.1", Datacenter: consulagent.Datacenter,
			Service: &api.AgentService{ID: id, Service: "ext", Port: port},
		}, nil)
		if err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
	}
	register("ext-1", 7001)
	snap, _, err := c.Snapshot().Save(nil)
	if err != nil {
		t.Fatal(err)
	}
	saved, err := io.ReadAll(snap)
	snap.Close()
	if err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 30; i++ { // move the indexes well past the snapshot's
		register(fmt.Sprintf("ext-%d", i), 7000+i)
	}
	h := newHarnessSource(t, agent.Address(), nil, func(s *Source) { s.catalogWait = 2 * time.Second })
	h.waitSnapshot("30 ext endpoints", func(s *discovery.Snapshot) bool { return len(endpointsOf(s, "ext")) == 30 })

	if err := c.Snapshot().Restore(nil, bytes.NewReader(saved)); err != nil {
		t.Fatal(err)
	}
	h.waitSnapshot("ext back to one endpoint", func(s *discovery.Snapshot) bool { return len(endpointsOf(s, "ext")) == 1 })
	register("ext-99", 7099)
	h.waitSnapshot("a change after the restore", func(s *discovery.Snapshot) bool {
		_, ok := endpointsOf(s, "ext")[7099]
		return ok
	})
}

func TestSourceWithoutConsul(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now

	// This source brings its own client.
	transport := newCountingTransport(http.DefaultTransport.(*http.Transport).Clone())
	src, err := New(Config{Address: addr, HTTPClient: &http.Client{Transport: transport}, MinBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if src.Name() != "consul" {
		t.Fatalf("Name() = %q", src.Name())
	}
	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan discovery.State)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, updates) }()
	select {
	case st := <-updates:
		if st.Err == nil || len(st.Services) != 0 || !strings.HasPrefix(st.Err.Error(), "consul: ") {
			t.Fatalf("first state = %+v, want an error prefixed consul: and no services", st)
		}
	case err := <-done:
		t.Fatalf("Run returned %v while Consul is down", err)
	case <-time.After(waitTimeout):
		t.Fatal("no error state sent")
	}
	// Retries continue with backoff, and send no further states.
	time.Sleep(1500 * time.Millisecond)
	select {
	case st := <-updates:
		t.Fatalf("another state was sent while nothing changed: %+v", st)
	default:
	}
	n := transport.total.Load()
	t.Logf("%d requests in 1.5s against an unreachable Consul", n)
	if n < 2 || n > 15 {
		t.Errorf("%d requests in 1.5s, want a few retries with backoff", n)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v on cancel, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestSource500Services measures the source with 500 services in two setups:
// one long poll per service against an agent whose connection limit allows
// it, and the default bound on connections against an agent with Consul's
// default limit (200 per client), where services take turns.
func TestSource500Services(t *testing.T) {
	t.Parallel()
	t.Run("one long poll per service", func(t *testing.T) {
		t.Parallel()
		test500Services(t, consulagent.Options{}, -1, -1)
	})
	t.Run("MaxConns sized from the agent's raised limit", func(t *testing.T) {
		t.Parallel()
		// 1,100 per client: three quarters of it (825) is room for a long
		// poll per service, with no setting on Bowline's side.
		test500Services(t, consulagent.Options{HTTPMaxConnsPerClient: 1100}, 0, 825)
	})
	t.Run("default MaxConns, default Consul limit", func(t *testing.T) {
		if testing.Short() {
			t.Skip("services take turns: the latency samples take seconds each")
		}
		t.Parallel()
		test500Services(t, consulagent.Options{HTTPMaxConnsPerClient: -1}, 0, DefaultMaxConns)
	})
}

// test500Services runs the adapter with Config.MaxConns = maxConns against
// an agent started with opts; wantBound is the bound on open requests the
// source should end up with (-1: none).
func test500Services(t *testing.T, opts consulagent.Options, maxConns, wantBound int) {
	const services = 500
	agent := consulagent.StartWith(t, opts)
	c := apiClient(t, agent)

	// Register the services on one external node, 128 operations (Consul's
	// most) per transaction.
	node := api.Node{Node: "bench-node", Address: "10.9.0.1", Datacenter: consulagent.Datacenter}
	svcOp := func(i, port int) *api.TxnOp {
		return &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node.Node, Service: api.AgentService{
			ID: fmt.Sprintf("svc-%03d-1", i), Service: fmt.Sprintf("svc-%03d", i), Port: port,
			Meta: map[string]string{"protocol": "http", "version": "v1"},
		}}}
	}
	commit := func(ops api.TxnOps) {
		t.Helper()
		ok, resp, _, err := c.Txn().Txn(ops, nil)
		if err != nil || !ok {
			t.Fatalf("txn: ok=%v err=%v resp=%+v", ok, err, resp)
		}
	}
	registerAll := func(basePort int) {
		ops := api.TxnOps{{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: node}}}
		for i := range services {
			ops = append(ops, svcOp(i, basePort+i))
			if len(ops) == 128 {
				commit(ops)
				ops = nil
			}
		}
		if len(ops) > 0 {
			commit(ops)
		}
	}
	registerAll(10000)

	start := time.Now()
	h := newHarness(t, agent.Address(), func(c *Config) { c.MaxConns = maxConns })
	_, at := h.waitSnapshot("500 services", func(s *discovery.Snapshot) bool { return s.Len() == services })
	t.Logf("initial sync of %d services: %s, %d requests", services, at.Sub(start).Round(time.Millisecond), h.transport.total.Load())
	if first := h.snapshots()[0]; first.Len() != services {
		t.Errorf("first snapshot had %d services, want all %d (no partial first state)", first.Len(), services)
	}

	// (a) Requests while idle.
	time.Sleep(200 * time.Millisecond) // let the first long polls settle
	const idle = 3 * time.Second
	before := h.transport.total.Load()
	time.Sleep(idle)
	idleRequests := h.transport.total.Load() - before
	t.Logf("idle: %d requests in %s with %d services (%.1f/s)", idleRequests, idle, services, float64(idleRequests)/idle.Seconds())
	if idleRequests >= 2*services {
		t.Errorf("%d requests in an idle %s with %d services: the watches spin", idleRequests, idle, services)
	}

	// (b) Change-to-catalog latency: move one service to another port,
	// measured from the write's start (so it includes Consul's commit) and
	// from its return.
	samples := 7
	turns := wantBound >= 0 && wantBound <= services
	if turns {
		samples = 4 // services take turns: each sample takes seconds
	}
	var lat, afterCommit []time.Duration
	for i := range samples {
		port := 20000 + i
		t0 := time.Now()
		commit(api.TxnOps{svcOp(i*71, port)})
		t1 := time.Now()
		_, at := h.waitSnapshot("moved service", func(s *discovery.Snapshot) bool {
			_, ok := endpointsOf(s, fmt.Sprintf("svc-%03d", i*71))[uint32(port)]
			return ok
		})
		lat, afterCommit = append(lat, at.Sub(t0)), append(afterCommit, at.Sub(t1))
	}
	spread := func(ds []time.Duration) string {
		slices.Sort(ds)
		r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
		return fmt.Sprintf("min %s, median %s, max %s", r(ds[0]), r(ds[len(ds)/2]), r(ds[len(ds)-1]))
	}
	t.Logf("change-to-catalog latency over %d changes: %s (from the write's return: %s)", len(lat), spread(lat), spread(afterCommit))

	// A burst: every service changes at once; few states are sent.
	statesBefore := len(h.rec.recorded())
	t0 := time.Now()
	registerAll(30000)
	_, at = h.waitSnapshot("burst applied", func(s *discovery.Snapshot) bool {
		for _, svc := range s.Services() {
			if len(svc.Endpoints) != 1 || svc.Endpoints[0].Port < 30000 {
				return false
			}
		}
		return s.Len() == services
	})
	t.Logf("burst of %d changes: in the catalog after %s, %d states sent", services, at.Sub(t0).Round(time.Millisecond), len(h.rec.recorded())-statesBefore)

	// An outage costs one probe per backoff, not one per service.
	// Counted from when the source reports the outage: the polls that were
	// open when the agent went away fail once each, and are not probes.
	agent.Stop()
	h.waitStatus("source down", func(s discovery.SourceStatus) bool { return !s.Healthy })
	before = h.transport.total.Load()
	time.Sleep(2 * time.Second)
	outage := h.transport.total.Load() - before
	t.Logf("outage: %d requests while Consul was down for ~2s with %d services", outage, services)
	if outage >= services/5 {
		t.Errorf("%d requests during a 2s outage with %d services, want a few probes", outage, services)
	}
	t0 = time.Now()
	agent.Restart()
	h.waitStatus("source healthy", func(s discovery.SourceStatus) bool { return s.Healthy })
	t.Logf("resync after restart: source healthy %s after the restart began", time.Since(t0).Round(time.Millisecond))
	for i, s := range h.snapshots() {
		if s.Len() != services {
			t.Errorf("snapshot %d has %d services, want %d throughout", i, s.Len(), services)
		}
	}

	if n, path := h.transport.mostOutstanding("/v1/"); n > 1 {
		t.Errorf("%d requests outstanding at once on %s, want at most 1 per watch", n, path)
	}
	most := h.transport.mostOutstandingOverall()
	t.Logf("most requests outstanding at once: %d; refused with 429: %d", most, h.transport.refusals.Load())
	if wantBound >= 0 && most > wantBound {
		t.Errorf("%d requests outstanding at once, want at most MaxConns (%d)", most, wantBound)
	}
	if !turns && most <= services {
		t.Errorf("at most %d requests outstanding at once with %d services and room for all: want a long poll per service", most, services)
	}
	if n := h.transport.refusals.Load(); n > 0 {
		t.Errorf("Consul refused %d requests for too many connections", n)
	}
}
