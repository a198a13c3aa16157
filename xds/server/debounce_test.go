package server

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/test/adsclient"
)

// snapFeed is a CatalogFeed driven by the test: every snapshot sent on it
// reaches the server as is, with no debounce of its own in between (unlike
// discovery.Catalog), so the server's debounce is the only one at work.
type snapFeed chan *discovery.Snapshot

func (f snapFeed) Subscribe() (<-chan *discovery.Snapshot, func()) { return f, func() {} }

// gathered reads a metric family from reg: the sum of its counters'
// values, or of its histograms' sample counts.
func gathered(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// endpointPorts lists the ports of a ClusterLoadAssignment the client holds.
func endpointPorts(t *testing.T, c *adsclient.Client, name string) []uint32 {
	t.Helper()
	a, ok := c.Resource(resourcev3.EndpointType, name)
	if !ok {
		return nil
	}
	var cla endpoint.ClusterLoadAssignment
	if err := a.UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	var ports []uint32
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			ports = append(ports, e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue())
		}
	}
	return ports
}

// A burst of catalog changes inside one debounce window becomes a few
// rebuilds and pushes, not one per change, and the proxy ends with the last
// state. The push and push-latency metrics move accordingly.
func TestBurstOfChangesIsDebounced(t *testing.T) {
	const (
		burst    = 50
		debounce = 250 * time.Millisecond
		// The burst is queued at once; the server drains it in far less than
		// one window, so one rebuild is expected. Allow a few in case the
		// machine stalls the server mid-burst.
		maxPushes = 5
	)
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	feed := make(snapFeed, burst+1)
	store := config.NewStore(log)
	store.Update(config.FileSet{Source: "test"})
	srv := New(log, Options{Debounce: debounce, Registerer: reg, Check: true})

	snap := discovery.NewSnapshot(nil, []*discovery.Service{grpcService("greeter", 5000), grpcService("other", 6000)})
	feed <- snap
	go func() { _ = srv.Run(ctx, feed, store) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	select {
	case <-srv.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("server not ready")
	}
	h := &harness{srv: srv, addr: lis.Addr().String(), reg: reg, store: store}
	c, updates := h.connect(t, adsclient.Options{Node: sidecarNode(t, "web-1", "web", "greeter:9191")})
	var edsUpdates atomic.Int64
	go func() {
		for {
			select {
			case u := <-updates:
				if u.TypeURL == resourcev3.EndpointType && !u.NACKed {
					edsUpdates.Add(1)
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	before := h.waitSynced(t, "web-1")
	if got := endpointPorts(t, c, "default/greeter"); fmt.Sprint(got) != "[5000]" {
		t.Fatalf("initial endpoints = %v", got)
	}
	builds := gathered(t, reg, "bowline_xds_builds_total")
	pushes := testutilPushes(srv)
	allPushes := gathered(t, reg, "bowline_xds_pushes_total")
	latencyCount := gathered(t, reg, "bowline_xds_push_latency_seconds")
	clientEDS := edsUpdates.Load()

	// 50 changes to greeter, each moving its endpoint to another port.
	start := time.Now()
	for i := 1; i <= burst; i++ {
		snap = discovery.NewSnapshot(snap, []*discovery.Service{grpcService("greeter", uint32(5000+i)), grpcService("other", 6000)})
		if _, changed := snap.Changed[discovery.ServiceKey{Namespace: "default", Name: "greeter"}]; !changed {
			t.Fatalf("change %d does not change greeter", i)
		}
		feed <- snap
	}
	queued := time.Since(start)

	// The proxy ends with the last state.
	want := fmt.Sprint([]uint32{5000 + burst})
	deadline := time.Now().Add(10 * time.Second)
	var p ProxyStatus
	for {
		p = h.waitSynced(t, "web-1")
		if fmt.Sprint(endpointPorts(t, c, "default/greeter")) == want && p.Acked["endpoints"] != before.Acked["endpoints"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy never got the last state: endpoints %v, status %+v", endpointPorts(t, c, "default/greeter"), p)
		}
		time.Sleep(5 * time.Millisecond)
	}
	res, ok := srv.ProxyResources("web-1")
	if !ok || !strings.Contains(fmt.Sprint(res.Endpoints), fmt.Sprint(5000+burst)) {
		t.Fatalf("served resources lack the last endpoint: %v", res)
	}
	// Only EDS moved: the rest of the configuration is the same.
	for _, typ := range []string{"listeners", "routes", "clusters"} {
		if p.Acked[typ] != before.Acked[typ] {
			t.Errorf("%s version changed on an endpoints-only burst", typ)
		}
	}
	// Let anything still in flight land before counting.
	time.Sleep(2 * debounce)
	h.waitSynced(t, "web-1")

	gotBuilds := gathered(t, reg, "bowline_xds_builds_total") - builds
	gotPushes := testutilPushes(srv) - pushes
	gotClient := edsUpdates.Load() - clientEDS
	t.Logf("%d changes queued in %s became %v translations, %v EDS pushes, %d EDS responses at the proxy",
		burst, queued, gotBuilds, gotPushes, gotClient)
	if gotPushes < 1 || gotPushes > maxPushes {
		t.Errorf("a burst of %d changes made %v EDS pushes, want between 1 and %d", burst, gotPushes, maxPushes)
	}
	if gotClient < 1 || gotClient > maxPushes {
		t.Errorf("the proxy received %d EDS responses for a burst of %d changes, want between 1 and %d", gotClient, burst, maxPushes)
	}
	// A sidecar's configuration is two parts; each rebuild translates the
	// outbound part (the inbound one may come from the memo).
	if gotBuilds < 1 || gotBuilds > 2*maxPushes {
		t.Errorf("a burst of %d changes took %v translations, want between 1 and %d", burst, gotBuilds, 2*maxPushes)
	}

	// /metrics: pushes went up, and so did the push-latency histogram's count
	// (observed when the proxy ACKed the pushed version).
	if got := gathered(t, reg, "bowline_xds_pushes_total"); got <= allPushes {
		t.Errorf("bowline_xds_pushes_total = %v after the burst, was %v", got, allPushes)
	}
	if got := gathered(t, reg, "bowline_xds_push_latency_seconds"); got <= latencyCount {
		t.Errorf("bowline_xds_push_latency_seconds_count = %v after an ACKed push, was %v", got, latencyCount)
	}
	if got := gathered(t, reg, "bowline_xds_build_errors_total"); got != 0 {
		t.Errorf("bowline_xds_build_errors_total = %v, want 0 (the check runs on every build)", got)
	}
}

func testutilPushes(s *Server) float64 {
	return testutil.ToFloat64(s.metrics.pushes.WithLabelValues("endpoints"))
}

// TestChangeAfterQuietIsAppliedAtOnce checks that the debounce delays only
// changes that follow a rebuild closely: with a debounce of an hour, the
// first input to arrive (the catalog or the configuration) is taken at once.
func TestChangeAfterQuietIsAppliedAtOnce(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	feed := make(snapFeed, 1)
	store := config.NewStore(log)
	store.Update(config.FileSet{Source: "test"})
	srv := New(log, Options{Debounce: time.Hour})
	feed <- discovery.NewSnapshot(nil, []*discovery.Service{grpcService("greeter", 5000)})
	go func() { _ = srv.Run(t.Context(), feed, store) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if in := srv.Input(); in.Catalog != nil || in.Config != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the first input waited for the debounce")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
