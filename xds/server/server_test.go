package server

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/test/adsclient"
)

// chanSource is a discovery source driven by the test.
type chanSource chan []*discovery.Service

func (c chanSource) Name() string { return "test" }
func (c chanSource) Run(ctx context.Context, out chan<- discovery.State) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case svcs := <-c:
			select {
			case out <- discovery.State{Services: svcs}:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

type harness struct {
	store *config.Store
	srv   *Server
	src   chanSource
	addr  string
	reg   *prometheus.Registry
}

func newHarness(t *testing.T, initial []*discovery.Service) *harness {
	t.Helper()
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	h := &harness{src: make(chanSource, 1), reg: prometheus.NewRegistry()}
	catalog := discovery.NewCatalog(log, discovery.Options{Debounce: time.Millisecond})
	store := config.NewStore(log)
	store.Update(config.FileSet{Source: "test"})
	h.store = store
	h.srv = New(log, Options{Debounce: time.Millisecond, Registerer: h.reg, Check: true})
	go func() { _ = catalog.Run(ctx, h.src) }()
	h.src <- initial
	go func() { _ = h.srv.Run(ctx, catalog, store) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	h.srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	h.addr = lis.Addr().String()
	select {
	case <-h.srv.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("server not ready")
	}
	return h
}

func grpcService(name string, ports ...uint32) *discovery.Service {
	s := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: name}, Protocol: discovery.ProtocolGRPC}
	for _, p := range ports {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Address: "127.0.0.1", Port: p})
	}
	return s
}

func sidecarNode(t *testing.T, id, service, upstreams string) *core.Node {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{MetaKind: "envoy", MetaService: service, MetaUpstreams: upstreams})
	if err != nil {
		t.Fatal(err)
	}
	return &core.Node{Id: id, Cluster: service, Metadata: md}
}

// connect runs a simulated Envoy against the harness until the test ends.
func (h *harness) connect(t *testing.T, opts adsclient.Options) (*adsclient.Client, <-chan adsclient.Update) {
	t.Helper()
	updates := make(chan adsclient.Update, 256)
	opts.Updates = updates
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	c := adsclient.New(opts)
	done := make(chan struct{})
	go func() { _ = c.Run(ctx, conn); close(done) }()
	t.Cleanup(func() { cancel(); <-done; conn.Close() })
	return c, updates
}

// waitSynced waits until the proxy has ACKed what it was sent for all four types.
func (h *harness) waitSynced(t *testing.T, id string) ProxyStatus {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p, ok := h.srv.Proxy(id)
		if ok && p.LastNACK == nil {
			synced := true
			for _, typ := range []string{"listeners", "routes", "clusters", "endpoints"} {
				if p.Sent[typ] == "" || p.Acked[typ] != p.Sent[typ] {
					synced = false
				}
			}
			if synced {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy %s not in sync: %+v", id, p)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSidecarSyncsOverSotWAndDelta(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprintf("delta=%t", delta), func(t *testing.T) {
			h := newHarness(t, []*discovery.Service{grpcService("greeter", 5001, 5002), grpcService("other", 6001)})
			c, _ := h.connect(t, adsclient.Options{Node: sidecarNode(t, "web-1", "web", "greeter:9191"), Delta: delta})
			p := h.waitSynced(t, "web-1")
			if want := map[bool]string{false: "sotw", true: "delta"}[delta]; p.Protocol != want || p.Kind != "envoy" || p.Service != "web" {
				t.Fatalf("proxy status %+v", p)
			}
			if got := c.Names(resourcev3.ClusterType); strings.Join(got, ",") != "default/greeter" {
				t.Fatalf("clusters = %v: a sidecar gets only its declared upstreams", got)
			}
			if got := c.Names(resourcev3.ListenerType); strings.Join(got, ",") != "outbound|9191|default/greeter" {
				t.Fatalf("listeners = %v", got)
			}

			// A change to an unrelated service reaches nobody.
			pushes := testutil.ToFloat64(h.srv.metrics.pushes.WithLabelValues("endpoints"))
			h.src <- []*discovery.Service{grpcService("greeter", 5001, 5002), grpcService("other", 6001, 6002)}
			time.Sleep(100 * time.Millisecond)
			if got := testutil.ToFloat64(h.srv.metrics.pushes.WithLabelValues("endpoints")); got != pushes {
				t.Fatalf("an unrelated change pushed endpoints: %v -> %v", pushes, got)
			}

			// A change to greeter reaches the proxy, and only EDS changes.
			before := h.waitSynced(t, "web-1")
			h.src <- []*discovery.Service{grpcService("greeter", 5001), grpcService("other", 6001, 6002)}
			deadline := time.Now().Add(5 * time.Second)
			for {
				p := h.waitSynced(t, "web-1")
				if p.Acked["endpoints"] != before.Acked["endpoints"] {
					for _, typ := range []string{"listeners", "routes", "clusters"} {
						if p.Acked[typ] != before.Acked[typ] {
							t.Errorf("%s version changed on an endpoints-only change", typ)
						}
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("endpoint change never ACKed")
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestNACKIsTracked(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprintf("delta=%t", delta), func(t *testing.T) {
			h := newHarness(t, []*discovery.Service{grpcService("greeter", 5001)})
			reject := func(typeURL string, _ []*anypb.Any) error {
				if typeURL == resourcev3.ClusterType {
					return fmt.Errorf("cluster default/greeter: unsupported thing")
				}
				return nil
			}
			h.connect(t, adsclient.Options{Node: sidecarNode(t, "web-1", "web", "greeter:9191"), Delta: delta, Reject: reject})
			deadline := time.Now().Add(5 * time.Second)
			for {
				p, ok := h.srv.Proxy("web-1")
				if ok && p.LastNACK != nil {
					if p.LastNACK.Type != "clusters" || !strings.Contains(p.LastNACK.Error, "unsupported thing") {
						t.Fatalf("NACK = %+v", p.LastNACK)
					}
					if p.Acked["clusters"] == p.Sent["clusters"] {
						t.Fatal("a NACKed version shows as ACKed")
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("NACK not recorded")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if got := testutil.ToFloat64(h.srv.metrics.nacks.WithLabelValues("clusters")); got < 1 {
				t.Fatalf("nacks metric = %v", got)
			}
		})
	}
}

func TestProxiesWithEqualConfigShareOneTranslation(t *testing.T) {
	h := newHarness(t, []*discovery.Service{grpcService("greeter", 5001)})
	for i := range 5 {
		h.connect(t, adsclient.Options{Node: sidecarNode(t, fmt.Sprintf("web-%d", i), "web", "greeter:9191")})
	}
	for i := range 5 {
		h.waitSynced(t, fmt.Sprintf("web-%d", i))
	}
	builds := testutil.ToFloat64(h.srv.metrics.builds)
	h.src <- []*discovery.Service{grpcService("greeter", 5001, 5002)}
	for i := range 5 {
		id := fmt.Sprintf("web-%d", i)
		deadline := time.Now().Add(5 * time.Second)
		for {
			if res, ok := h.srv.ProxyResources(id); ok && strings.Contains(fmt.Sprint(res.Endpoints), "5002") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never got the new endpoint", id)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// One translation of the shared outbound part and one of the inbound
	// part (all five front the same service), not one per proxy.
	if got := testutil.ToFloat64(h.srv.metrics.builds) - builds; got != 2 {
		t.Fatalf("one change to 5 identical proxies took %v translations, want 2", got)
	}
}

func TestVersionsAreDerivedFromContent(t *testing.T) {
	var seen []ProxyStatus
	for range 2 {
		h := newHarness(t, []*discovery.Service{grpcService("greeter", 5001, 5002)})
		h.connect(t, adsclient.Options{Node: sidecarNode(t, "web-1", "web", "greeter:9191")})
		seen = append(seen, h.waitSynced(t, "web-1"))
	}
	for _, typ := range []string{"listeners", "routes", "clusters", "endpoints"} {
		if seen[0].Sent[typ] != seen[1].Sent[typ] {
			t.Errorf("%s: two servers with the same input sent versions %q and %q", typ, seen[0].Sent[typ], seen[1].Sent[typ])
		}
	}
}

func TestDisconnectForgetsTheProxy(t *testing.T) {
	h := newHarness(t, []*discovery.Service{grpcService("greeter", 5001)})
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		_ = adsclient.New(adsclient.Options{Node: sidecarNode(t, "web-1", "web", "greeter:9191")}).Run(ctx, conn)
		close(done)
	}()
	h.waitSynced(t, "web-1")
	if got := testutil.ToFloat64(h.srv.metrics.connected); got != 1 {
		t.Fatalf("connected = %v", got)
	}
	cancel()
	<-done
	conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := h.srv.Proxy("web-1"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("proxy still listed after its stream closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := testutil.ToFloat64(h.srv.metrics.connected); got != 0 {
		t.Fatalf("connected = %v after disconnect", got)
	}
}

func TestProxyFromNode(t *testing.T) {
	for _, tc := range []struct {
		name    string
		meta    map[string]any
		ua      string
		cluster string
		want    string
		wantErr string
	}{
		{name: "metadata", meta: map[string]any{"kind": "envoy", "service": "web", "namespace": "shop", "inbound_port": "21000", "upstreams": "greeter:9191,billing/pay:9292"},
			want: "envoy shop/web in=21000 ups=[shop/greeter:9191 billing/pay:9292]"},
		{name: "grpc by user agent", ua: "gRPC Go", cluster: "client", want: "grpc default/client in=0 ups=[]"},
		{name: "numeric port", meta: map[string]any{"service": "web", "inbound_port": 21000.0}, want: "envoy default/web in=21000 ups=[]"},
		{name: "bad kind", meta: map[string]any{"kind": "nginx"}, wantErr: "unknown kind"},
		{name: "bad port", meta: map[string]any{"inbound_port": "x"}, wantErr: "not a port"},
		{name: "bad upstream", meta: map[string]any{"upstreams": "greeter"}, wantErr: "want name:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			md, err := structpb.NewStruct(tc.meta)
			if err != nil {
				t.Fatal(err)
			}
			p, err := ProxyFromNode(&core.Node{Id: "x", Cluster: tc.cluster, UserAgentName: tc.ua, Metadata: md})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ups []string
			for _, u := range p.Upstreams {
				ups = append(ups, fmt.Sprintf("%s:%d", u.Service, u.LocalPort))
			}
			got := fmt.Sprintf("%s %s in=%d ups=%v", p.Kind, p.Service, p.InboundPort, ups)
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRuleChangesReachOnlyTheProxiesTheyConcern(t *testing.T) {
	h := newHarness(t, []*discovery.Service{grpcService("greeter", 5001), grpcService("other", 6001)})
	h.connect(t, adsclient.Options{Node: sidecarNode(t, "calls-greeter", "web", "greeter:9191")})
	h.connect(t, adsclient.Options{Node: sidecarNode(t, "calls-other", "api", "other:9292")})
	greeter, other := h.waitSynced(t, "calls-greeter"), h.waitSynced(t, "calls-other")

	h.store.Update(config.FileSet{Source: "test", Files: []config.File{{Name: "defaults.hcl", Content: []byte(
		"service_defaults \"greeter\" {\n  request_timeout = \"2s\"\n}\n")}}})
	deadline := time.Now().Add(5 * time.Second)
	for {
		p := h.waitSynced(t, "calls-greeter")
		if p.Acked["routes"] != greeter.Acked["routes"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the proxy calling greeter never got the new timeout")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if p := h.waitSynced(t, "calls-other"); !maps.Equal(p.Sent, other.Sent) {
		t.Fatalf("a rule for greeter changed the config of a proxy that only calls other: %v -> %v", other.Sent, p.Sent)
	}
}
