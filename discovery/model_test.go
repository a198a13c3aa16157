package discovery_test

import (
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/discovery"
)

func TestParseProtocol(t *testing.T) {
	tests := []struct {
		in      string
		want    discovery.Protocol
		wantErr bool
	}{
		{in: "", want: discovery.ProtocolTCP},
		{in: "tcp", want: discovery.ProtocolTCP},
		{in: "http", want: discovery.ProtocolHTTP},
		{in: "http2", want: discovery.ProtocolHTTP2},
		{in: "grpc", want: discovery.ProtocolGRPC},
		{in: " GRPC ", want: discovery.ProtocolGRPC},
		{in: "Http", want: discovery.ProtocolHTTP},
		{in: "udp", wantErr: true},
		{in: "h2", wantErr: true},
		{in: "http/1.1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := discovery.ParseProtocol(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseProtocol(%q) = %q, want an error", tt.in, got)
				}
				if !strings.Contains(err.Error(), tt.in) {
					t.Errorf("error %q does not name the bad value %q", err, tt.in)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseProtocol(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseProtocol(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestProtocolClassification(t *testing.T) {
	tests := []struct {
		p           discovery.Protocol
		http, http2 bool
	}{
		{discovery.ProtocolTCP, false, false},
		{discovery.ProtocolHTTP, true, false},
		{discovery.ProtocolHTTP2, true, true},
		{discovery.ProtocolGRPC, true, true},
	}
	for _, tt := range tests {
		t.Run(string(tt.p), func(t *testing.T) {
			if got := tt.p.IsHTTP(); got != tt.http {
				t.Errorf("IsHTTP() = %v, want %v", got, tt.http)
			}
			if got := tt.p.NeedsHTTP2(); got != tt.http2 {
				t.Errorf("NeedsHTTP2() = %v, want %v", got, tt.http2)
			}
		})
	}
}

func TestParseHealth(t *testing.T) {
	tests := []struct {
		in      string
		want    discovery.Health
		wantErr bool
	}{
		{in: "", want: discovery.HealthHealthy},
		{in: "healthy", want: discovery.HealthHealthy},
		{in: "passing", want: discovery.HealthHealthy},
		{in: "HEALTHY", want: discovery.HealthHealthy},
		{in: "degraded", want: discovery.HealthDegraded},
		{in: "warning", want: discovery.HealthDegraded},
		{in: "unhealthy", want: discovery.HealthUnhealthy},
		{in: "critical", want: discovery.HealthUnhealthy},
		{in: "Critical", want: discovery.HealthUnhealthy},
		{in: "maintenance", wantErr: true},
		{in: "ok", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := discovery.ParseHealth(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseHealth(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseHealth(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseHealth(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestHealthTextRoundTrip(t *testing.T) {
	for _, h := range []discovery.Health{discovery.HealthHealthy, discovery.HealthDegraded, discovery.HealthUnhealthy} {
		text, err := h.MarshalText()
		if err != nil {
			t.Fatalf("MarshalText(%d): %v", int(h), err)
		}
		if string(text) != h.String() {
			t.Errorf("MarshalText(%d) = %q, String() = %q", int(h), text, h.String())
		}
		back, err := discovery.ParseHealth(string(text))
		if err != nil || back != h {
			t.Errorf("ParseHealth(%q) = %v, %v; want %v", text, back, err, h)
		}
	}
	if s := discovery.Health(42).String(); !strings.Contains(s, "42") {
		t.Errorf("unknown health renders as %q, want it to carry the value 42", s)
	}
}

func TestParseServiceKey(t *testing.T) {
	tests := []struct {
		in, defaultNS string
		want          discovery.ServiceKey
	}{
		{in: "web", defaultNS: "default", want: discovery.ServiceKey{Namespace: "default", Name: "web"}},
		{in: "web", defaultNS: "shop", want: discovery.ServiceKey{Namespace: "shop", Name: "web"}},
		{in: "prod/web", defaultNS: "default", want: discovery.ServiceKey{Namespace: "prod", Name: "web"}},
		{in: "prod/web", defaultNS: "shop", want: discovery.ServiceKey{Namespace: "prod", Name: "web"}},
	}
	for _, tt := range tests {
		t.Run(tt.in+"@"+tt.defaultNS, func(t *testing.T) {
			got := discovery.ParseServiceKey(tt.in, tt.defaultNS)
			if got != tt.want {
				t.Errorf("ParseServiceKey(%q, %q) = %+v, want %+v", tt.in, tt.defaultNS, got, tt.want)
			}
			// The rendered key parses back to itself.
			if back := discovery.ParseServiceKey(got.String(), "other"); back != got {
				t.Errorf("ParseServiceKey(%q) = %+v, want %+v", got.String(), back, got)
			}
		})
	}
}

func TestServiceKeyCompare(t *testing.T) {
	a := discovery.ServiceKey{Namespace: "a", Name: "z"}
	b := discovery.ServiceKey{Namespace: "b", Name: "a"}
	c := discovery.ServiceKey{Namespace: "b", Name: "b"}
	tests := []struct {
		x, y discovery.ServiceKey
		want int
	}{
		{a, b, -1}, {b, a, 1}, {b, c, -1}, {c, b, 1}, {a, a, 0},
	}
	for _, tt := range tests {
		if got := tt.x.Compare(tt.y); got != tt.want {
			t.Errorf("%v.Compare(%v) = %d, want %d", tt.x, tt.y, got, tt.want)
		}
	}
	if got := c.String(); got != "b/b" {
		t.Errorf("String() = %q, want b/b", got)
	}
}

func TestIdentities(t *testing.T) {
	if got, want := discovery.ServiceIdentity("mesh.example.com", "shop", "cart"), "spiffe://mesh.example.com/ns/shop/svc/cart"; got != want {
		t.Errorf("ServiceIdentity = %q, want %q", got, want)
	}
	if got, want := discovery.ServiceAccountIdentity("cluster.local", "shop", "cart-sa"), "spiffe://cluster.local/ns/shop/sa/cart-sa"; got != want {
		t.Errorf("ServiceAccountIdentity = %q, want %q", got, want)
	}
}

// baseService is a fully populated, normalized service used as the starting
// point of the Equal and version tables.
func baseService() *discovery.Service {
	return &discovery.Service{
		ServiceKey: discovery.ServiceKey{Namespace: "shop", Name: "cart"},
		Protocol:   discovery.ProtocolHTTP,
		Labels:     map[string]string{"team": "payments"},
		Upstreams: []discovery.Upstream{
			{Service: discovery.ServiceKey{Namespace: "shop", Name: "db"}, LocalPort: 5432},
			{Service: discovery.ServiceKey{Namespace: "shop", Name: "pricing"}, LocalPort: 9000},
		},
		Endpoints: []discovery.Endpoint{
			{
				Address: "10.0.0.1", Port: 8080, Labels: map[string]string{"version": "v1"},
				Locality: discovery.Locality{Region: "eu", Zone: "eu-1a"},
				Health:   discovery.HealthHealthy, Identity: "spiffe://bowline.local/ns/shop/svc/cart",
				SidecarPort: 21000, Weight: 1, Source: "consul",
			},
			{
				Address: "10.0.0.2", Port: 8080, Labels: map[string]string{"version": "v2"},
				Locality: discovery.Locality{Region: "eu", Zone: "eu-1b"},
				Health:   discovery.HealthDegraded, Source: "consul",
			},
		},
		Sources: []string{"consul"},
	}
}

// mutations each change exactly one observable property of baseService.
var mutations = []struct {
	name   string
	mutate func(s *discovery.Service)
}{
	{"namespace", func(s *discovery.Service) { s.Namespace = "other" }},
	{"name", func(s *discovery.Service) { s.Name = "basket" }},
	{"protocol", func(s *discovery.Service) { s.Protocol = discovery.ProtocolGRPC }},
	{"service label value", func(s *discovery.Service) { s.Labels["team"] = "checkout" }},
	{"service label added", func(s *discovery.Service) { s.Labels["tier"] = "gold" }},
	{"service labels removed", func(s *discovery.Service) { s.Labels = nil }},
	{"upstream port", func(s *discovery.Service) { s.Upstreams[0].LocalPort = 5433 }},
	{"upstream removed", func(s *discovery.Service) { s.Upstreams = s.Upstreams[:1] }},
	{"sources", func(s *discovery.Service) { s.Sources = []string{"consul", "file"} }},
	{"endpoint address", func(s *discovery.Service) { s.Endpoints[0].Address = "10.0.0.9" }},
	{"endpoint port", func(s *discovery.Service) { s.Endpoints[0].Port = 8081 }},
	{"endpoint label value", func(s *discovery.Service) { s.Endpoints[0].Labels["version"] = "v3" }},
	{"endpoint label added", func(s *discovery.Service) { s.Endpoints[1].Labels["canary"] = "true" }},
	{"endpoint labels removed", func(s *discovery.Service) { s.Endpoints[0].Labels = nil }},
	{"endpoint health", func(s *discovery.Service) { s.Endpoints[0].Health = discovery.HealthUnhealthy }},
	{"endpoint region", func(s *discovery.Service) { s.Endpoints[0].Region = "us" }},
	{"endpoint zone", func(s *discovery.Service) { s.Endpoints[0].Zone = "eu-1c" }},
	{"endpoint sub-zone", func(s *discovery.Service) { s.Endpoints[0].SubZone = "rack-7" }},
	{"endpoint identity", func(s *discovery.Service) { s.Endpoints[0].Identity = "spiffe://other/ns/shop/svc/cart" }},
	{"endpoint sidecar port", func(s *discovery.Service) { s.Endpoints[0].SidecarPort = 21001 }},
	{"endpoint weight", func(s *discovery.Service) { s.Endpoints[0].Weight = 5 }},
	{"endpoint source", func(s *discovery.Service) { s.Endpoints[1].Source = "nomad" }},
	{"endpoint removed", func(s *discovery.Service) { s.Endpoints = s.Endpoints[:1] }},
	{"endpoint added", func(s *discovery.Service) {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Address: "10.0.0.3", Port: 8080, Source: "consul"})
	}},
}

func TestServiceEqual(t *testing.T) {
	base := baseService()
	if !base.Equal(baseService()) {
		t.Fatal("two identical services are not Equal")
	}
	if c := base.Clone(); !base.Equal(c) || !c.Equal(base) {
		t.Fatal("a service is not Equal to its clone")
	}
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			s := baseService()
			m.mutate(s)
			s.Normalize()
			if base.Equal(s) || s.Equal(base) {
				t.Errorf("services that differ in %s compare Equal", m.name)
			}
		})
	}
}

func TestServiceEqualNilAndEmptyLabels(t *testing.T) {
	a := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "a"},
		Endpoints: []discovery.Endpoint{{Address: "10.0.0.1", Port: 80}}}
	b := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "a"}, Labels: map[string]string{},
		Endpoints: []discovery.Endpoint{{Address: "10.0.0.1", Port: 80, Labels: map[string]string{}}}}
	if !a.Equal(b) {
		t.Error("nil and empty label maps should be Equal")
	}
}

func TestCloneIsDeep(t *testing.T) {
	orig := baseService()
	c := orig.Clone()
	c.Labels["team"] = "changed"
	c.Endpoints[0].Labels["version"] = "changed"
	c.Endpoints[0].Port = 1
	c.Upstreams[0].LocalPort = 1
	c.Sources[0] = "changed"
	if !orig.Equal(baseService()) {
		t.Errorf("modifying a clone changed the original: %+v", orig)
	}
}

func TestNormalize(t *testing.T) {
	ep := func(addr string, port uint32, src string) discovery.Endpoint {
		return discovery.Endpoint{Address: addr, Port: port, Source: src}
	}
	up := func(ns, name string, port uint32) discovery.Upstream {
		return discovery.Upstream{Service: discovery.ServiceKey{Namespace: ns, Name: name}, LocalPort: port}
	}
	tests := []struct {
		name string
		in   discovery.Service
		want discovery.Service
	}{
		{
			name: "empty namespace becomes default",
			in:   discovery.Service{ServiceKey: discovery.ServiceKey{Name: "a"}},
			want: discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "a"}},
		},
		{
			name: "endpoints sorted by address, port, source",
			in: discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "ns", Name: "a"}, Endpoints: []discovery.Endpoint{
				ep("10.0.0.2", 80, "a"), ep("10.0.0.1", 81, "a"), ep("10.0.0.1", 80, "b"), ep("10.0.0.1", 80, "a"),
			}},
			want: discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "ns", Name: "a"}, Endpoints: []discovery.Endpoint{
				ep("10.0.0.1", 80, "a"), ep("10.0.0.1", 80, "b"), ep("10.0.0.1", 81, "a"), ep("10.0.0.2", 80, "a"),
			}},
		},
		{
			name: "identical endpoints of one source collapse, other sources keep theirs",
			in: discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "ns", Name: "a"}, Endpoints: []discovery.Endpoint{
				ep("10.0.0.1", 80, "a"), ep("10.0.0.1", 80, "b"), ep("10.0.0.1", 80, "a"),
			}},
			want: discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "ns", Name: "a"}, Endpoints: []discovery.Endpoint{
				ep("10.0.0.1", 80, "a"), ep("10.0.0.1", 80, "b"),
			}},
		},
		{
			name: "upstreams sorted by service then port",
			in: discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "ns", Name: "a"}, Upstreams: []discovery.Upstream{
				up("ns", "z", 1), up("b", "a", 9), up("ns", "a", 7), up("ns", "a", 3),
			}},
			want: discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "ns", Name: "a"}, Upstreams: []discovery.Upstream{
				up("b", "a", 9), up("ns", "a", 3), up("ns", "a", 7), up("ns", "z", 1),
			}},
		},
		{
			name: "sources sorted and deduplicated",
			in:   discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "ns", Name: "a"}, Sources: []string{"nomad", "consul", "nomad", "file"}},
			want: discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "ns", Name: "a"}, Sources: []string{"consul", "file", "nomad"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in.Clone()
			got.Normalize()
			if !got.Equal(&tt.want) {
				t.Errorf("Normalize:\n got  %+v\n want %+v", got, tt.want)
			}
			again := got.Clone()
			again.Normalize()
			if !again.Equal(got) {
				t.Errorf("Normalize is not idempotent:\n once  %+v\n twice %+v", got, again)
			}
		})
	}
}

func TestSidecarEndpoint(t *testing.T) {
	s := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "ns", Name: "a"}, Endpoints: []discovery.Endpoint{
		{Address: "10.0.0.3", Port: 80, SidecarPort: 21003},
		{Address: "10.0.0.1", Port: 80},
		{Address: "10.0.0.2", Port: 80, SidecarPort: 21002},
	}}
	s.Normalize()
	e, ok := s.SidecarEndpoint()
	if !ok || e.Address != "10.0.0.2" || e.SidecarPort != 21002 {
		t.Errorf("SidecarEndpoint() = %+v, %v; want the first endpoint in sorted order with a sidecar (10.0.0.2)", e, ok)
	}
	none := &discovery.Service{Endpoints: []discovery.Endpoint{{Address: "10.0.0.1", Port: 80}}}
	if e, ok := none.SidecarEndpoint(); ok {
		t.Errorf("SidecarEndpoint() = %+v, true for a service without sidecars", e)
	}
}
