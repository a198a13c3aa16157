package nomad

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/adapters/nomad/nomadtest"
	"github.com/bowlinemesh/bowline/discovery"
)

const waitTimeout = 15 * time.Second

// eventually retries f until it returns nil or the timeout passes (as
// meshtest.Eventually, without pulling the control plane into these tests).
func eventually(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recorder runs a source and keeps every state it sends.
type recorder struct {
	mu     sync.Mutex
	states []discovery.State
}

func (r *recorder) all() []discovery.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.states)
}

// last returns the newest state.
func (r *recorder) last() (discovery.State, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return discovery.State{}, false
	}
	return r.states[len(r.states)-1], true
}

// countingTransport counts the requests a source makes, failed ones included.
type countingTransport struct {
	base     http.RoundTripper
	attempts atomic.Int64
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.attempts.Add(1)
	return c.base.RoundTrip(req)
}

func newCounting() *countingTransport {
	return &countingTransport{base: http.DefaultTransport.(*http.Transport).Clone()}
}

// testConfig is a Config for the double with short waits.
func testConfig(s *nomadtest.Server) Config {
	return Config{
		Address: s.URL(), Namespace: "*", TrustDomain: "bowline.local",
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		HeartbeatTimeout: 30 * time.Second, WaitTime: 2 * time.Second,
	}
}

// startSource runs a source until the test ends.
func startSource(t *testing.T, cfg Config) *recorder {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	src, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	updates := make(chan discovery.State)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, updates) }()
	go func() {
		for st := range updates {
			rec.mu.Lock()
			rec.states = append(rec.states, st)
			rec.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
		close(updates)
	})
	return rec
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a line after the test ended
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// summary renders a state as "ns/name: addr:port[label=v,...] ..." per
// service, sorted, for comparisons.
func summary(st discovery.State) map[string][]string {
	out := map[string][]string{}
	for _, s := range st.Services {
		var eps []string
		for _, e := range s.Endpoints {
			eps = append(eps, fmt.Sprintf("%s:%d", e.Address, e.Port))
		}
		slices.Sort(eps)
		out[s.ServiceKey.String()] = eps
	}
	return out
}

// endpointsOf returns the endpoints of one service in a state.
func endpointsOf(st discovery.State, key string) []discovery.Endpoint {
	for _, s := range st.Services {
		if s.ServiceKey.String() == key {
			return s.Endpoints
		}
	}
	return nil
}

// waitFor waits until the newest state satisfies check.
func waitFor(t *testing.T, rec *recorder, check func(discovery.State) error) discovery.State {
	t.Helper()
	var st discovery.State
	eventually(t, waitTimeout, func() error {
		var ok bool
		if st, ok = rec.last(); !ok {
			return errors.New("no state yet")
		}
		if st.Err != nil {
			return fmt.Errorf("the source is down: %v", st.Err)
		}
		return check(st)
	})
	return st
}

// waitPorts waits until the service has exactly the given ports.
func waitPorts(t *testing.T, rec *recorder, key string, ports ...int) discovery.State {
	t.Helper()
	var want []string
	for _, p := range ports {
		want = append(want, fmt.Sprintf("127.0.0.1:%d", p))
	}
	slices.Sort(want)
	return waitFor(t, rec, func(st discovery.State) error {
		if got := summary(st)[key]; !slices.Equal(got, want) {
			return fmt.Errorf("%s has %v, want %v", key, got, want)
		}
		return nil
	})
}

var (
	webJob = nomadtest.Job{ID: "web", Services: []nomadtest.Service{{Name: "web", PortLabel: "http", Tags: []string{"v1"},
		Meta: map[string]string{"version": "v1", "protocol": "grpc"}}}}
	apiJob = nomadtest.Job{ID: "api", Meta: map[string]string{"team": "payments"}, Services: []nomadtest.Service{
		{Name: "api", PortLabel: "http", Tags: []string{"v2", "mesh"}, Meta: map[string]string{"version": "v2", "protocol": "http", "bowline-sidecar-port": "sidecar", "owner": "${NOMAD_META_team}"}},
		{Name: "api-grpc", PortLabel: "grpc", Meta: map[string]string{"protocol": "grpc"}},
	}}
)

func TestNomadSourceFollowsRegistrationsThroughTheEventStream(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{})
	s.AddNode(nomadtest.Node{ID: nomadtest.DefaultNode.ID, Name: "vm", Datacenter: "dc1", Meta: map[string]string{"zone": "rack-1"}})
	s.SubmitJob(webJob)
	s.SubmitJob(apiJob)
	s.StartAlloc("", "web", map[string]int{"http": 24433})
	w2 := s.StartAlloc("", "web", map[string]int{"http": 23083})
	s.StartAlloc("", "api", map[string]int{"http": 30530, "grpc": 29869, "sidecar": 30531})

	rec := startSource(t, testConfig(s))
	st := waitPorts(t, rec, "default/web", 23083, 24433)
	api := endpointsOf(st, "default/api")
	if len(api) != 1 {
		t.Fatalf("api: %+v", api)
	}
	want := discovery.Endpoint{
		Address: "127.0.0.1", Port: 30530, SidecarPort: 30531,
		Labels:   map[string]string{"version": "v2", "protocol": "http", "owner": "payments", "tags": "mesh,v2"},
		Locality: discovery.Locality{Region: "dc1", Zone: "rack-1"}, Identity: "spiffe://bowline.local/ns/default/svc/api",
	}
	if !api[0].Equal(&want) {
		t.Fatalf("api endpoint %+v\nwant %+v", api[0], want)
	}
	for _, svc := range st.Services {
		wantProto := map[string]discovery.Protocol{"web": discovery.ProtocolGRPC, "api": discovery.ProtocolHTTP, "api-grpc": discovery.ProtocolGRPC}[svc.Name]
		if svc.Protocol != wantProto {
			t.Errorf("%s: protocol %s, want %s", svc.ServiceKey, svc.Protocol, wantProto)
		}
	}
	lists := s.Requests("/v1/services")

	// Scale up, stop one instance, stop a job: all through the stream.
	w3 := s.StartAlloc("", "web", map[string]int{"http": 21426})
	waitPorts(t, rec, "default/web", 21426, 23083, 24433)
	s.StopAlloc(w2)
	waitPorts(t, rec, "default/web", 21426, 24433)
	s.StopJob("", "api")
	waitFor(t, rec, func(st discovery.State) error {
		if got := summary(st); len(got) != 1 {
			return fmt.Errorf("want web alone, got %v", got)
		}
		return nil
	})
	s.StopAlloc(w3)
	waitPorts(t, rec, "default/web", 24433)

	if n := s.Requests("/v1/services"); n != lists {
		t.Errorf("the source listed the services %d more times: changes should come through the event stream", n-lists)
	}
	if n := s.StreamsOpened(); n != 1 {
		t.Errorf("%d event streams opened, want 1", n)
	}
	// Each allocation was read once (4 allocations), the node once.
	if n := s.Requests("/v1/allocation/"); n != 4 {
		t.Errorf("%d allocation reads, want 4 (one per allocation)", n)
	}
	if n := s.Requests("/v1/node/"); n != 1 {
		t.Errorf("%d node reads, want 1", n)
	}
	for i, st := range rec.all() {
		if st.Err != nil {
			t.Errorf("state %d is an error: %v", i, st.Err)
		}
	}
}

func TestNomadSourceFollowsMetaChanges(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{})
	s.SubmitJob(webJob)
	a1 := s.StartAlloc("", "web", map[string]int{"http": 24433})
	rec := startSource(t, testConfig(s))
	version := func(v string) func(discovery.State) error {
		return func(st discovery.State) error {
			eps := endpointsOf(st, "default/web")
			if len(eps) != 1 || eps[0].Labels["version"] != v {
				return fmt.Errorf("web endpoints %+v, want version %s", eps, v)
			}
			return nil
		}
	}
	waitFor(t, rec, version("v1"))
	reads := s.Requests("/v1/allocation/" + a1)

	// An in-place update: new meta in the running allocation, no new
	// registration.
	job := webJob
	job.Services = slices.Clone(webJob.Services)
	job.Services[0].Meta = map[string]string{"version": "v2", "protocol": "grpc"}
	s.SubmitJob(job)
	waitFor(t, rec, version("v2"))
	if n := s.Requests("/v1/allocation/" + a1); n != reads+1 {
		t.Errorf("the allocation was read %d more times, want 1", n-reads)
	}

	// New tags re-register the service.
	job.Services[0].Tags = []string{"v2", "canary", "stage=blue"}
	s.SubmitJob(job)
	st := waitFor(t, rec, func(st discovery.State) error {
		eps := endpointsOf(st, "default/web")
		if len(eps) != 1 || eps[0].Labels["tags"] != "canary,v2" || eps[0].Labels["stage"] != "blue" {
			return fmt.Errorf("web endpoints %+v, want the new tags", eps)
		}
		return nil
	})
	if v := endpointsOf(st, "default/web")[0].Labels["version"]; v != "v2" {
		t.Errorf("version %q after the tag change, want v2", v)
	}

	if n := s.Requests("/v1/services"); n != 1 {
		t.Errorf("%d listings: changes should come through the event stream, not resyncs", n)
	}

	// A protocol change in meta changes the service's protocol.
	job.Services[0].Meta = map[string]string{"version": "v2", "protocol": "http2"}
	s.SubmitJob(job)
	waitFor(t, rec, func(st discovery.State) error {
		if len(st.Services) != 1 || st.Services[0].Protocol != discovery.ProtocolHTTP2 {
			return fmt.Errorf("want web on http2: %+v", st.Services)
		}
		return nil
	})
}

// A change made while the stream is down is found by the resync, and nothing
// is duplicated.
func TestNomadSourceResyncsAfterTheStreamDrops(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{})
	s.SubmitJob(webJob)
	a1 := s.StartAlloc("", "web", map[string]int{"http": 24433})
	s.StartAlloc("", "web", map[string]int{"http": 23083})
	rec := startSource(t, testConfig(s))
	waitPorts(t, rec, "default/web", 23083, 24433)
	if err := s.WaitStreams(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	lists := s.Requests("/v1/services")

	for round := range 3 {
		s.Down() // cuts the stream mid-way and refuses the reconnection
		s.StopAlloc(a1)
		a1 = s.StartAlloc("", "web", map[string]int{"http": 25000 + round})
		s.Up()
		waitPorts(t, rec, "default/web", 23083, 25000+round)
	}
	// And a drop while Nomad stays up.
	if n := s.DropStreams(); n != 1 {
		t.Fatalf("dropped %d streams", n)
	}
	s.StartAlloc("", "web", map[string]int{"http": 26000})
	waitPorts(t, rec, "default/web", 23083, 25002, 26000)

	if n := s.Requests("/v1/services"); n < lists+4 {
		t.Errorf("%d resyncs after 4 drops", n-lists)
	}
	for i, st := range rec.all() {
		for key, eps := range summary(st) {
			if len(slices.Compact(slices.Clone(eps))) != len(eps) {
				t.Errorf("state %d: %s has duplicate endpoints %v", i, key, eps)
			}
		}
	}
}

// Nothing is missed between the resync and the stream: the cluster changes
// after the names were listed and before the stream is open, and between the
// listing and the reading of a service.
func TestNomadSourceMissesNothingAroundTheResync(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{})
	s.SubmitJob(webJob)
	s.SubmitJob(nomadtest.Job{ID: "late", Services: []nomadtest.Service{{Name: "late", PortLabel: "http"}}})
	s.StartAlloc("", "web", map[string]int{"http": 24433})
	var streamOnce, webOnce sync.Once
	var hooked atomic.Int32
	s.OnRequest(func(r *http.Request) {
		switch r.URL.Path {
		case "/v1/event/stream":
			// A service the listing did not have, registered before the
			// stream subscribes: only the replay from the resync's index
			// carries it.
			streamOnce.Do(func() {
				s.StartAlloc("", "late", map[string]int{"http": 27000})
				hooked.Add(1)
			})
		case "/v1/service/web":
			// An instance that comes and goes before web is read.
			webOnce.Do(func() {
				s.StopAlloc(s.StartAlloc("", "web", map[string]int{"http": 29999}))
				hooked.Add(1)
			})
		}
	})
	rec := startSource(t, testConfig(s))
	waitFor(t, rec, func(st discovery.State) error {
		got := summary(st)
		if !slices.Equal(got["default/web"], []string{"127.0.0.1:24433"}) || !slices.Equal(got["default/late"], []string{"127.0.0.1:27000"}) {
			return fmt.Errorf("state %v", got)
		}
		return nil
	})
	s.OnRequest(nil)
	if hooked.Load() != 2 {
		t.Fatalf("%d hooks ran, want 2", hooked.Load())
	}
	if n := s.Requests("/v1/services"); n != 1 {
		t.Errorf("%d listings: the late service should come from the stream, not a second resync", n)
	}
	for i, st := range rec.all() {
		if slices.Contains(summary(st)["default/web"], "127.0.0.1:29999") {
			t.Errorf("state %d has an instance the resync had already seen leave: %v", i, summary(st))
		}
	}
}

func TestNomadSourceFailStatic(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{})
	s.SubmitJob(webJob)
	a1 := s.StartAlloc("", "web", map[string]int{"http": 24433})
	cfg := testConfig(s)
	ct := newCounting()
	cfg.HTTPClient = &http.Client{Transport: ct}
	rec := startSource(t, cfg)
	waitPorts(t, rec, "default/web", 24433)
	good := len(rec.all())

	s.Down()
	s.StopAlloc(a1)
	s.StartAlloc("", "web", map[string]int{"http": 23083})
	eventually(t, waitTimeout, func() error {
		st, _ := rec.last()
		if st.Err == nil {
			return errors.New("no error reported yet")
		}
		return nil
	})
	// Several retries later, still one error state, and never an empty one.
	before := ct.attempts.Load()
	eventually(t, waitTimeout, func() error {
		if n := ct.attempts.Load() - before; n < 3 {
			return fmt.Errorf("%d retries so far", n)
		}
		return nil
	})
	states := rec.all()
	if n := len(states) - good; n != 1 || states[good].Err == nil || len(states[good].Services) != 0 {
		t.Fatalf("while down, want exactly one error state, got %d states: %+v", n, states[good:])
	}
	if !strings.HasPrefix(states[good].Err.Error(), "nomad: ") {
		t.Errorf("error %q lacks the component prefix", states[good].Err)
	}

	s.Up()
	waitPorts(t, rec, "default/web", 23083)
}

// Nomad down when the source starts: the first state is an error (so the
// catalog can become ready), then the services once Nomad answers.
func TestNomadSourceStartsWhileNomadIsDown(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{})
	s.SubmitJob(webJob)
	s.StartAlloc("", "web", map[string]int{"http": 24433})
	s.Down()
	rec := startSource(t, testConfig(s))
	eventually(t, waitTimeout, func() error {
		if st, ok := rec.last(); !ok || st.Err == nil {
			return errors.New("no error state yet")
		}
		return nil
	})
	s.Up()
	waitPorts(t, rec, "default/web", 24433)
}

// Nomad comes back at a lower index (a cluster restored or rebuilt): the
// resync takes the new index, and later events are applied.
func TestNomadSourceRestartWithANewIndex(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{Index: 1000})
	s.SubmitJob(webJob)
	s.StartAlloc("", "web", map[string]int{"http": 24433})
	rec := startSource(t, testConfig(s))
	waitPorts(t, rec, "default/web", 24433)

	s.Restart(5)
	if err := s.WaitStreams(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	s.StartAlloc("", "web", map[string]int{"http": 23083})
	waitPorts(t, rec, "default/web", 23083, 24433)
	if idx := s.Index(); idx > 100 {
		t.Fatalf("index %d: the double did not restart low", idx)
	}
}

// A stream that goes silent (no heartbeats) is taken as dead.
func TestNomadSourceStalledStreamReconnects(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{HeartbeatInterval: 50 * time.Millisecond})
	s.SubmitJob(webJob)
	s.StartAlloc("", "web", map[string]int{"http": 24433})
	cfg := testConfig(s)
	cfg.HeartbeatTimeout = 300 * time.Millisecond
	rec := startSource(t, cfg)
	waitPorts(t, rec, "default/web", 24433)

	s.Stall(true)
	s.StartAlloc("", "web", map[string]int{"http": 23083}) // the stalled stream does not carry it
	eventually(t, waitTimeout, func() error {
		if n := s.StreamsOpened(); n < 2 {
			return fmt.Errorf("%d streams opened", n)
		}
		return nil
	})
	s.Stall(false)
	waitPorts(t, rec, "default/web", 23083, 24433)
	s.StartAlloc("", "web", map[string]int{"http": 21426})
	waitPorts(t, rec, "default/web", 21426, 23083, 24433)
}

// Without the event stream, blocking queries follow the catalog.
func TestNomadSourceWithoutTheEventStream(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{NoEventStream: true})
	s.SubmitJob(webJob)
	a1 := s.StartAlloc("", "web", map[string]int{"http": 24433})
	rec := startSource(t, testConfig(s))
	waitPorts(t, rec, "default/web", 24433)
	s.StartAlloc("", "web", map[string]int{"http": 23083})
	waitPorts(t, rec, "default/web", 23083, 24433)
	s.StopAlloc(a1)
	waitPorts(t, rec, "default/web", 23083)
	if n := s.Requests("/v1/event/stream"); n != 1 {
		t.Errorf("%d event stream requests, want 1", n)
	}
}

func TestNomadSourceNamespaces(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{})
	for _, ns := range []string{"prod", "dev"} {
		j := webJob
		j.Namespace = ns
		s.SubmitJob(j)
	}
	s.StartAlloc("prod", "web", map[string]int{"http": 24433})
	s.StartAlloc("dev", "web", map[string]int{"http": 23083})

	all := startSource(t, testConfig(s))
	waitFor(t, all, func(st discovery.State) error {
		if got := summary(st); len(got) != 2 || len(got["prod/web"]) != 1 || len(got["dev/web"]) != 1 {
			return fmt.Errorf("state %v", got)
		}
		return nil
	})
	cfg := testConfig(s)
	cfg.Namespace = "prod"
	prod := startSource(t, cfg)
	waitPorts(t, prod, "prod/web", 24433)
	s.StartAlloc("dev", "web", map[string]int{"http": 21426})
	s.StartAlloc("prod", "web", map[string]int{"http": 21427})
	waitPorts(t, prod, "prod/web", 21427, 24433)
	waitPorts(t, all, "dev/web", 21426, 23083)
	for _, st := range prod.all() {
		if _, ok := summary(st)["dev/web"]; ok {
			t.Fatalf("a source for namespace prod reported dev: %v", summary(st))
		}
	}
}

func TestNomadSourceTLSAndToken(t *testing.T) {
	files := nomadtest.WriteTLSFiles(t)
	s := nomadtest.Start(t, nomadtest.Options{Token: "s3cr3t", TLS: &nomadtest.TLSOptions{Files: files, RequireClientCert: true}})
	s.SubmitJob(webJob)
	s.StartAlloc("", "web", map[string]int{"http": 24433})
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Fatalf("URL %s", s.URL())
	}

	cfg := testConfig(s)
	cfg.Token, cfg.CAFile, cfg.CertFile, cfg.KeyFile = "s3cr3t", files.CA, files.ClientCert, files.ClientKey
	waitPorts(t, startSource(t, cfg), "default/web", 24433)

	down := func(cfg Config) error {
		rec := startSource(t, cfg)
		var err error
		eventually(t, waitTimeout, func() error {
			st, ok := rec.last()
			if !ok || st.Err == nil {
				return errors.New("no error state yet")
			}
			err = st.Err
			return nil
		})
		return err
	}
	noCert := cfg
	noCert.CertFile, noCert.KeyFile = "", ""
	t.Setenv("NOMAD_CLIENT_CERT", "")
	t.Setenv("NOMAD_CLIENT_KEY", "")
	if err := down(noCert); err == nil {
		t.Fatal("a client without a certificate was let in")
	}
	badToken := cfg
	badToken.Token = "nope"
	if err := down(badToken); !strings.Contains(err.Error(), "403") {
		t.Fatalf("with a bad token: %v, want a 403", err)
	}
}

// An allocation Nomad already forgot: its registrations keep their tags.
func TestNomadSourceAllocationGone(t *testing.T) {
	s := nomadtest.Start(t, nomadtest.Options{})
	s.SubmitJob(webJob)
	a1 := s.StartAlloc("", "web", map[string]int{"http": 24433})
	s.ForgetAlloc(a1)
	rec := startSource(t, testConfig(s))
	st := waitPorts(t, rec, "default/web", 24433)
	if eps := endpointsOf(st, "default/web"); eps[0].Labels["tags"] != "v1" || eps[0].Labels["version"] != "" {
		t.Fatalf("labels %v, want the tags only", eps[0].Labels)
	}
}

func TestNomadNewRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"cert without key": {CertFile: "c.pem"},
		"negative backoff": {MinBackoff: -1},
		"bad address":      {Address: "://nope"},
	} {
		if _, err := New(cfg, nil); err == nil {
			t.Errorf("%s: want an error", name)
		} else if !strings.HasPrefix(err.Error(), "nomad: ") {
			t.Errorf("%s: error %q lacks the prefix", name, err)
		}
	}
	src, err := New(Config{}, nil)
	if err != nil || src.Name() != "nomad" {
		t.Fatalf("New(zero): %v, %v", src, err)
	}
}
