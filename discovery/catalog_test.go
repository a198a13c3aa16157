package discovery_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/discovery"
)

// waitLimit bounds every wait for the catalog to react; it is a deadline for
// a condition to become true, never a duration being asserted.
const waitLimit = 5 * time.Second

// fakeSource is a discovery.Source that forwards whatever the test puts on
// its channel, and returns err (if any) when the test closes fail.
type fakeSource struct {
	name   string
	states chan discovery.State
	fail   chan error
}

func newFakeSource(name string) *fakeSource {
	return &fakeSource{name: name, states: make(chan discovery.State), fail: make(chan error, 1)}
}

func (f *fakeSource) Name() string { return f.name }

func (f *fakeSource) Run(ctx context.Context, updates chan<- discovery.State) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-f.fail:
			return err
		case st := <-f.states:
			select {
			case updates <- st:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// send hands st to the catalog (blocking until the catalog took it).
func (f *fakeSource) send(t *testing.T, st discovery.State) {
	t.Helper()
	select {
	case f.states <- st:
	case <-time.After(waitLimit):
		t.Fatalf("source %s: catalog did not take the state", f.name)
	}
}

func (f *fakeSource) sendServices(t *testing.T, services ...*discovery.Service) {
	t.Helper()
	f.send(t, discovery.State{Services: services})
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// runCatalog runs a catalog over sources until the test ends, and checks that
// Run then returns without error.
func runCatalog(t *testing.T, sources ...discovery.Source) *discovery.Catalog {
	t.Helper()
	c := discovery.NewCatalog(quietLogger(), discovery.Options{Debounce: time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, sources...) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Catalog.Run returned %v after cancellation, want nil", err)
			}
		case <-time.After(waitLimit):
			t.Error("Catalog.Run did not return after cancellation")
		}
	})
	return c
}

func waitReady(t *testing.T, c *discovery.Catalog) *discovery.Snapshot {
	t.Helper()
	select {
	case <-c.Ready():
	case <-time.After(waitLimit):
		t.Fatal("catalog never became ready")
	}
	s := c.Snapshot()
	if s == nil {
		t.Fatal("Ready is closed but Snapshot() is nil")
	}
	return s
}

func recv(t *testing.T, ch <-chan *discovery.Snapshot) *discovery.Snapshot {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(waitLimit):
		t.Fatal("no snapshot received")
		return nil
	}
}

// eventually polls cond until it holds or waitLimit passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func sourceStatus(t *testing.T, c *discovery.Catalog, name string) discovery.SourceStatus {
	t.Helper()
	for _, s := range c.Sources() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("Sources() has no %q: %+v", name, c.Sources())
	return discovery.SourceStatus{}
}

func endpointAddrs(s *discovery.Service) []string {
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, e.Address+"@"+e.Source)
	}
	return out
}

func mustService(t *testing.T, snap *discovery.Snapshot, k discovery.ServiceKey) *discovery.Service {
	t.Helper()
	s, ok := snap.Service(k)
	if !ok {
		t.Fatalf("snapshot %s has no service %v", snap.Version, k)
	}
	return s
}

func TestCatalogMergesSources(t *testing.T) {
	consul, nomad := newFakeSource("consul"), newFakeSource("nomad")
	c := runCatalog(t, nomad, consul)

	webC := svc("default", "web", "10.0.0.1")
	webC.Labels = map[string]string{"team": "a", "tier": "front"}
	webC.Upstreams = []discovery.Upstream{{Service: key("default", "db"), LocalPort: 5432}}
	webN := svc("", "web", "10.0.0.2") // empty namespace means default
	webN.Protocol = discovery.ProtocolGRPC
	webN.Labels = map[string]string{"team": "b", "owner": "ops"}
	webN.Upstreams = []discovery.Upstream{{Service: key("default", "cache"), LocalPort: 6379}}
	webN.Endpoints = append(webN.Endpoints, discovery.Endpoint{Address: "10.0.0.3", Port: 8080, Source: "nomad-eu"})
	consul.sendServices(t, webC, svc("default", "db", "10.0.1.1"))
	nomad.sendServices(t, webN)

	snap := waitReady(t, c)
	web := mustService(t, snap, key("default", "web"))
	if got, want := endpointAddrs(web), []string{"10.0.0.1@consul", "10.0.0.2@nomad", "10.0.0.3@nomad-eu"}; !slices.Equal(got, want) {
		t.Errorf("web endpoints = %v, want %v", got, want)
	}
	if got, want := web.Sources, []string{"consul", "nomad"}; !slices.Equal(got, want) {
		t.Errorf("web Sources = %v, want %v", got, want)
	}
	if web.Protocol != discovery.ProtocolHTTP {
		t.Errorf("web protocol = %q, want the first source's (consul) http", web.Protocol)
	}
	wantLabels := map[string]string{"team": "a", "tier": "front", "owner": "ops"}
	if len(web.Labels) != len(wantLabels) {
		t.Errorf("web labels = %v, want %v", web.Labels, wantLabels)
	}
	for k, v := range wantLabels {
		if web.Labels[k] != v {
			t.Errorf("web label %s = %q, want %q (first source wins on conflicts)", k, web.Labels[k], v)
		}
	}
	if len(web.Upstreams) != 2 {
		t.Errorf("web upstreams = %v, want both sources' upstreams", web.Upstreams)
	}
	db := mustService(t, snap, key("default", "db"))
	if !slices.Equal(db.Sources, []string{"consul"}) {
		t.Errorf("db Sources = %v, want [consul]", db.Sources)
	}
	if snap.Len() != 2 {
		t.Errorf("snapshot has %d services, want 2", snap.Len())
	}

	names := []string{}
	for _, s := range c.Sources() {
		names = append(names, s.Name)
		if !s.Healthy || !s.Synced {
			t.Errorf("source %s: Healthy=%v Synced=%v, want both true", s.Name, s.Healthy, s.Synced)
		}
	}
	if !slices.Equal(names, []string{"consul", "nomad"}) {
		t.Errorf("Sources() = %v, want [consul nomad] (ordered by name)", names)
	}
	if n := sourceStatus(t, c, "consul").Services; n != 2 {
		t.Errorf("consul Services = %d, want 2", n)
	}
}

func TestCatalogProtocolFromFirstSourceThatDeclaresOne(t *testing.T) {
	a, b := newFakeSource("a"), newFakeSource("b")
	c := runCatalog(t, a, b)
	noProto := svc("default", "x", "10.0.0.1")
	noProto.Protocol = ""
	grpc := svc("default", "x", "10.0.0.2")
	grpc.Protocol = discovery.ProtocolGRPC
	bare := svc("default", "y", "10.0.0.3")
	bare.Protocol = ""
	a.sendServices(t, noProto, bare)
	b.sendServices(t, grpc)
	snap := waitReady(t, c)
	if p := mustService(t, snap, key("default", "x")).Protocol; p != discovery.ProtocolGRPC {
		t.Errorf("x protocol = %q, want grpc (a declares none)", p)
	}
	if p := mustService(t, snap, key("default", "y")).Protocol; p != discovery.ProtocolTCP {
		t.Errorf("y protocol = %q, want tcp (nobody declares one)", p)
	}
}

func TestCatalogDoesNotModifySourceState(t *testing.T) {
	a := newFakeSource("a")
	c := runCatalog(t, a)
	in := svc("", "web", "10.0.0.2", "10.0.0.1")
	a.sendServices(t, in)
	snap := waitReady(t, c)
	if in.Namespace != "" || in.Endpoints[0].Address != "10.0.0.2" || in.Endpoints[0].Source != "" || in.Sources != nil {
		t.Errorf("the catalog modified the source's service: %+v", in)
	}
	if out := mustService(t, snap, key("default", "web")); out == in {
		t.Error("the snapshot holds the source's own *Service")
	}
}

func TestCatalogFailStatic(t *testing.T) {
	consul, file := newFakeSource("consul"), newFakeSource("file")
	c := runCatalog(t, consul, file)
	sub, cancel := c.Subscribe()
	defer cancel()

	consul.sendServices(t, svc("default", "web", "10.0.0.1", "10.0.0.2"))
	file.sendServices(t, svc("default", "static", "10.9.0.1"))
	first := recv(t, sub)
	if first.Len() != 2 {
		t.Fatalf("first snapshot has %d services, want 2", first.Len())
	}

	// The registry becomes unreachable.
	consul.send(t, discovery.State{Err: errors.New("consul: connection refused")})
	eventually(t, "consul to be reported unhealthy", func() bool { return !sourceStatus(t, c, "consul").Healthy })
	st := sourceStatus(t, c, "consul")
	if st.LastError != "consul: connection refused" {
		t.Errorf("LastError = %q, want the source's error", st.LastError)
	}
	if st.ErrorSince.IsZero() {
		t.Error("ErrorSince is zero while the source fails")
	}
	if !st.Synced || st.Services != 1 {
		t.Errorf("failing source: Synced=%v Services=%d, want true and its last good count 1", st.Synced, st.Services)
	}
	if fs := sourceStatus(t, c, "file"); !fs.Healthy {
		t.Errorf("file source became unhealthy: %+v", fs)
	}

	// A second error keeps the original ErrorSince and updates LastError;
	// services sent along with an error are ignored.
	since := st.ErrorSince
	consul.send(t, discovery.State{Err: errors.New("consul: timeout"), Services: []*discovery.Service{svc("default", "ignored", "10.0.0.9")}})
	eventually(t, "the second error to be recorded", func() bool { return sourceStatus(t, c, "consul").LastError == "consul: timeout" })
	if got := sourceStatus(t, c, "consul").ErrorSince; !got.Equal(since) {
		t.Errorf("ErrorSince moved from %v to %v on a repeated error", since, got)
	}

	// Another source changes: the next snapshot still holds consul's last
	// good endpoints and names only the file service as changed.
	file.sendServices(t, svc("default", "static", "10.9.0.1", "10.9.0.2"))
	next := recv(t, sub)
	if got, want := keysOf(next.Changed), []discovery.ServiceKey{key("default", "static")}; !slices.Equal(got, want) {
		t.Errorf("Changed = %v, want %v (the failing source must not count as a change)", got, want)
	}
	if web := mustService(t, next, key("default", "web")); len(web.Endpoints) != 2 {
		t.Errorf("web has %d endpoints while consul fails, want its last good 2", len(web.Endpoints))
	}
	if _, ok := next.Service(key("default", "ignored")); ok {
		t.Error("services sent along with an error were used")
	}
	if next.Len() != 2 {
		t.Errorf("snapshot has %d services while consul fails, want 2", next.Len())
	}
	if c.Snapshot() != next {
		t.Error("Snapshot() is not the snapshot last delivered")
	}

	// Recovery with new content.
	consul.sendServices(t, svc("default", "web", "10.0.0.3"))
	rec := recv(t, sub)
	if got, want := keysOf(rec.Changed), []discovery.ServiceKey{key("default", "web")}; !slices.Equal(got, want) {
		t.Errorf("Changed after recovery = %v, want %v", got, want)
	}
	if got := endpointAddrs(mustService(t, rec, key("default", "web"))); !slices.Equal(got, []string{"10.0.0.3@consul"}) {
		t.Errorf("web endpoints after recovery = %v, want [10.0.0.3@consul]", got)
	}
	st = sourceStatus(t, c, "consul")
	if !st.Healthy || st.LastError != "" || !st.ErrorSince.IsZero() || st.LastUpdate.IsZero() {
		t.Errorf("recovered source status = %+v, want healthy with no error", st)
	}
}

func TestCatalogUnchangedStatePublishesNothing(t *testing.T) {
	a, b := newFakeSource("a"), newFakeSource("b")
	c := runCatalog(t, a, b)
	a.sendServices(t, svc("default", "web", "10.0.0.1", "10.0.0.2"))
	b.sendServices(t, svc("default", "db", "10.0.1.1"))
	first := waitReady(t, c)

	sub, cancel := c.Subscribe()
	defer cancel()
	if s := recv(t, sub); s.Version != first.Version || s.Changed != nil {
		t.Fatalf("Subscribe's first snapshot = %s (changed %v), want the current one with Changed=nil", s.Version, s.Changed)
	}

	// The same content, as new objects in another order.
	a.sendServices(t, svc("default", "web", "10.0.0.2", "10.0.0.1"))
	// A real change from the other source acts as a barrier: the first
	// snapshot to arrive must carry only that change.
	b.sendServices(t, svc("default", "db", "10.0.1.1", "10.0.1.2"))
	next := recv(t, sub)
	if got, want := keysOf(next.Changed), []discovery.ServiceKey{key("default", "db")}; !slices.Equal(got, want) {
		t.Errorf("Changed = %v, want %v", got, want)
	}
	if next.Version == first.Version {
		t.Error("version did not change with the content")
	}
}

func TestCatalogSlowSubscriberGetsUnionOfChanges(t *testing.T) {
	a, b := newFakeSource("a"), newFakeSource("b")
	c := runCatalog(t, a, b)
	a.sendServices(t, svc("default", "x", "10.0.0.1"), svc("default", "y", "10.0.0.2"))
	b.sendServices(t, svc("default", "z", "10.0.0.3"), svc("default", "keep", "10.0.0.4"))
	waitReady(t, c)

	sub, cancel := c.Subscribe()
	defer cancel()
	recv(t, sub) // the current snapshot

	// Three separate snapshots that the subscriber does not read.
	steps := []struct {
		src  *fakeSource
		svcs []*discovery.Service
	}{
		{a, []*discovery.Service{svc("default", "x", "10.0.0.1", "10.0.0.11"), svc("default", "y", "10.0.0.2")}},                   // x changed
		{b, []*discovery.Service{svc("default", "keep", "10.0.0.4")}},                                                              // z removed
		{a, []*discovery.Service{svc("default", "x", "10.0.0.1", "10.0.0.11"), svc("default", "y", "10.0.0.2"), svc("prod", "w")}}, // w added
	}
	for _, st := range steps {
		prev := c.Snapshot().Version
		st.src.sendServices(t, st.svcs...)
		eventually(t, "a new snapshot", func() bool { return c.Snapshot().Version != prev })
	}
	got := recv(t, sub)
	if got.Version != c.Snapshot().Version {
		t.Errorf("slow subscriber got version %s, want the newest %s", got.Version, c.Snapshot().Version)
	}
	if ks, want := keysOf(got.Changed), []discovery.ServiceKey{key("default", "x"), key("default", "z"), key("prod", "w")}; !slices.Equal(ks, want) {
		t.Errorf("folded Changed = %v, want %v", ks, want)
	}
	select {
	case extra := <-sub:
		t.Errorf("a second snapshot %s was queued; a slow reader must only get the newest", extra.Version)
	default:
	}
	// The catalog's own latest snapshot keeps its own changed set.
	if ks := keysOf(c.Snapshot().Changed); !slices.Equal(ks, []discovery.ServiceKey{key("prod", "w")}) {
		t.Errorf("catalog's latest Changed = %v, want [prod/w] (folding must not modify the shared snapshot)", ks)
	}

	// A new subscriber has seen nothing: everything is new to it.
	fresh, cancelFresh := c.Subscribe()
	defer cancelFresh()
	if s := recv(t, fresh); s.Version != c.Snapshot().Version || s.Changed != nil {
		t.Errorf("new subscriber got %s with Changed=%v, want the latest with Changed=nil", s.Version, keysOf(s.Changed))
	}
}

func TestCatalogSubscriberThatMissedFirstSnapshotGetsEverything(t *testing.T) {
	a := newFakeSource("a")
	c := runCatalog(t, a)
	sub, cancel := c.Subscribe() // before any snapshot: nothing yet
	defer cancel()
	select {
	case s := <-sub:
		t.Fatalf("got snapshot %v before any source reported", s)
	default:
	}
	a.sendServices(t, svc("default", "x", "10.0.0.1"))
	waitReady(t, c)
	prev := c.Snapshot().Version
	a.sendServices(t, svc("default", "x", "10.0.0.2"))
	eventually(t, "a second snapshot", func() bool { return c.Snapshot().Version != prev })
	if got := recv(t, sub); got.Changed != nil {
		t.Errorf("a subscriber that never read the first snapshot got Changed=%v, want nil (everything)", keysOf(got.Changed))
	}
}

func TestCatalogSubscribeCancel(t *testing.T) {
	a := newFakeSource("a")
	c := runCatalog(t, a)
	a.sendServices(t, svc("default", "x", "10.0.0.1"))
	waitReady(t, c)
	gone, cancelGone := c.Subscribe()
	<-gone
	cancelGone()
	live, cancelLive := c.Subscribe()
	defer cancelLive()
	<-live
	a.sendServices(t, svc("default", "x", "10.0.0.2"))
	recv(t, live) // delivered to every subscriber at once
	select {
	case s := <-gone:
		t.Errorf("cancelled subscriber received %s", s.Version)
	default:
	}
}

func TestCatalogReadyAfterEverySourceReported(t *testing.T) {
	fast, slow := newFakeSource("fast"), newFakeSource("slow")
	c := runCatalog(t, fast, slow)

	fast.sendServices(t, svc("default", "a", "10.0.0.1"))
	// A second state from the same source is only taken once the first was
	// fully handled.
	fast.sendServices(t, svc("default", "a", "10.0.0.1"), svc("default", "b", "10.0.0.2"))
	eventually(t, "fast's second state", func() bool { return sourceStatus(t, c, "fast").Services == 2 })
	// Give a catalog that would publish early many debounce periods to do so;
	// a correct one never does, however long this is.
	time.Sleep(50 * time.Millisecond)
	select {
	case <-c.Ready():
		t.Fatal("Ready closed before every source reported")
	default:
	}
	if s := c.Snapshot(); s != nil {
		t.Fatalf("snapshot %s published before every source reported", s.Version)
	}
	if st := sourceStatus(t, c, "slow"); st.Synced || st.Healthy {
		t.Errorf("slow source status before reporting = %+v", st)
	}

	// An error counts as the slow source's first report.
	slow.send(t, discovery.State{Err: errors.New("registry down")})
	snap := waitReady(t, c)
	if snap.Changed != nil {
		t.Errorf("first snapshot Changed = %v, want nil", snap.Changed)
	}
	if snap.Len() != 2 {
		t.Errorf("first snapshot has %d services, want fast's 2", snap.Len())
	}
	st := sourceStatus(t, c, "slow")
	if st.Healthy || st.Synced || st.LastError != "registry down" {
		t.Errorf("slow source status = %+v, want unhealthy, not synced, with its error", st)
	}
}

func TestCatalogWithoutSourcesIsReadyAndEmpty(t *testing.T) {
	c := runCatalog(t)
	snap := waitReady(t, c)
	if snap.Len() != 0 || snap.Version == "" {
		t.Errorf("empty catalog snapshot: len %d, version %q", snap.Len(), snap.Version)
	}
}

func TestCatalogSourceErrorStopsRun(t *testing.T) {
	a := newFakeSource("a")
	c := discovery.NewCatalog(quietLogger(), discovery.Options{})
	done := make(chan error, 1)
	go func() { done <- c.Run(t.Context(), a) }()
	sentinel := errors.New("cannot start")
	a.fail <- sentinel
	select {
	case err := <-done:
		if !errors.Is(err, sentinel) {
			t.Errorf("Run returned %v, want it to wrap %v", err, sentinel)
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return after a source failed")
	}
}

// TestCatalogPublishesALoneUpdateAtOnce checks that the debounce delays only
// updates that follow a snapshot closely: with a debounce of an hour, the
// first update is published at once, and one right after it waits.
func TestCatalogPublishesALoneUpdateAtOnce(t *testing.T) {
	src := newFakeSource("file")
	c := discovery.NewCatalog(quietLogger(), discovery.Options{Debounce: time.Hour})
	go func() { _ = c.Run(t.Context(), src) }()
	snaps, cancel := c.Subscribe()
	defer cancel()
	src.sendServices(t, svc("default", "web", "10.0.0.1"))
	if s := recv(t, snaps); len(s.Services()) != 1 {
		t.Fatalf("first snapshot has %d services", len(s.Services()))
	}
	// Within the hour: held back.
	src.sendServices(t, svc("default", "web", "10.0.0.2"))
	select {
	case s := <-snaps:
		t.Fatalf("an update right after a snapshot was published at once (version %s), want it held for the debounce", s.Version)
	case <-time.After(50 * time.Millisecond):
	}
}
