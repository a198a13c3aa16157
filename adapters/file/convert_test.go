package file_test

import (
	"reflect"
	"testing"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

func key(ns, name string) discovery.ServiceKey {
	return discovery.ServiceKey{Namespace: ns, Name: name}
}

func TestConvert(t *testing.T) {
	const td = "mesh.example.com"
	tests := []struct {
		name string
		decl *config.ServiceDecl
		want *discovery.Service
	}{
		{
			name: "minimal tcp service",
			decl: &config.ServiceDecl{Name: "db", Namespace: "default", Protocol: "tcp",
				Endpoints: []*config.EndpointDecl{{Address: "10.0.0.1", Port: 5432}}},
			want: &discovery.Service{ServiceKey: key("default", "db"), Protocol: discovery.ProtocolTCP,
				Endpoints: []discovery.Endpoint{{Address: "10.0.0.1", Port: 5432, Health: discovery.HealthHealthy,
					Identity: "spiffe://mesh.example.com/ns/default/svc/db"}}},
		},
		{
			name: "every endpoint attribute",
			decl: &config.ServiceDecl{Name: "greeter", Namespace: "shop", Protocol: "grpc",
				Endpoints: []*config.EndpointDecl{{
					Address: "greeter-1.internal", Port: 50051, Labels: map[string]string{"version": "v1"},
					Health: "degraded", SidecarPort: 21000, Region: "eu-west", Zone: "eu-west-1a", Weight: 7,
				}}},
			want: &discovery.Service{ServiceKey: key("shop", "greeter"), Protocol: discovery.ProtocolGRPC,
				Endpoints: []discovery.Endpoint{{
					Address: "greeter-1.internal", Port: 50051, Labels: map[string]string{"version": "v1"},
					Locality: discovery.Locality{Region: "eu-west", Zone: "eu-west-1a"},
					Health:   discovery.HealthDegraded, Identity: "spiffe://mesh.example.com/ns/shop/svc/greeter",
					SidecarPort: 21000, Weight: 7,
				}}},
		},
		{
			name: "health names",
			decl: &config.ServiceDecl{Name: "h", Namespace: "default", Protocol: "http", Endpoints: []*config.EndpointDecl{
				{Address: "10.0.0.1", Port: 80, Health: "healthy"},
				{Address: "10.0.0.2", Port: 80, Health: "unhealthy"},
				{Address: "10.0.0.3", Port: 80},
			}},
			want: &discovery.Service{ServiceKey: key("default", "h"), Protocol: discovery.ProtocolHTTP, Endpoints: []discovery.Endpoint{
				{Address: "10.0.0.1", Port: 80, Health: discovery.HealthHealthy, Identity: "spiffe://mesh.example.com/ns/default/svc/h"},
				{Address: "10.0.0.2", Port: 80, Health: discovery.HealthUnhealthy, Identity: "spiffe://mesh.example.com/ns/default/svc/h"},
				{Address: "10.0.0.3", Port: 80, Health: discovery.HealthHealthy, Identity: "spiffe://mesh.example.com/ns/default/svc/h"},
			}},
		},
		{
			name: "service labels merged under endpoint labels",
			decl: &config.ServiceDecl{Name: "web", Namespace: "default", Protocol: "http",
				Labels: map[string]string{"team": "web", "version": "stable"},
				Endpoints: []*config.EndpointDecl{
					{Address: "10.0.0.1", Port: 80, Labels: map[string]string{"version": "v2", "canary": "true"}},
					{Address: "10.0.0.2", Port: 80},
				}},
			want: &discovery.Service{ServiceKey: key("default", "web"), Protocol: discovery.ProtocolHTTP,
				Labels: map[string]string{"team": "web", "version": "stable"},
				Endpoints: []discovery.Endpoint{
					{Address: "10.0.0.1", Port: 80, Labels: map[string]string{"team": "web", "version": "v2", "canary": "true"},
						Identity: "spiffe://mesh.example.com/ns/default/svc/web"},
					{Address: "10.0.0.2", Port: 80, Labels: map[string]string{"team": "web", "version": "stable"},
						Identity: "spiffe://mesh.example.com/ns/default/svc/web"},
				}},
		},
		{
			name: "upstreams default to the service's namespace",
			decl: &config.ServiceDecl{Name: "frontend", Namespace: "shop", Protocol: "http",
				Upstreams: []*config.UpstreamDecl{
					{Name: "cart", LocalPort: 9001},
					{Name: "invoices", Namespace: "billing", LocalPort: 9002},
				}},
			want: &discovery.Service{ServiceKey: key("shop", "frontend"), Protocol: discovery.ProtocolHTTP,
				Upstreams: []discovery.Upstream{
					{Service: key("shop", "cart"), LocalPort: 9001},
					{Service: key("billing", "invoices"), LocalPort: 9002},
				},
				Endpoints: []discovery.Endpoint{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &config.Config{Mesh: config.Mesh{TrustDomain: td}, Services: []*config.ServiceDecl{tt.decl}}
			got := file.Convert(cfg)
			if len(got) != 1 {
				t.Fatalf("Convert returned %d services, want 1", len(got))
			}
			if !got[0].Equal(tt.want) || !reflect.DeepEqual(got[0].Labels, tt.want.Labels) {
				t.Errorf("Convert:\n got  %+v\n want %+v", got[0], tt.want)
			}
		})
	}
}

func TestConvertDoesNotAliasConfig(t *testing.T) {
	decl := &config.ServiceDecl{Name: "web", Namespace: "default", Protocol: "http",
		Labels:    map[string]string{"team": "web"},
		Endpoints: []*config.EndpointDecl{{Address: "10.0.0.1", Port: 80, Labels: map[string]string{"version": "v1"}}}}
	cfg := &config.Config{Mesh: config.Mesh{TrustDomain: "td"}, Services: []*config.ServiceDecl{decl}}
	got := file.Convert(cfg)
	got[0].Labels["team"] = "changed"
	got[0].Endpoints[0].Labels["version"] = "changed"
	got[0].Endpoints[0].Labels["team"] = "changed"
	if decl.Labels["team"] != "web" || decl.Endpoints[0].Labels["version"] != "v1" {
		t.Errorf("modifying the converted service changed the published configuration: %+v / %+v", decl.Labels, decl.Endpoints[0].Labels)
	}
}

// The declarations of a parsed file convert to the model, with the mesh's
// trust domain in every identity.
func TestConvertParsedConfig(t *testing.T) {
	cfg, diags := config.Parse([]config.File{{Name: "mesh.hcl", Content: []byte(`
mesh {
  trust_domain = "corp.example"
}

service "greeter" {
  namespace = "default"   # optional, default "default"
  protocol  = "grpc"
  labels    = { team = "hello" }
  endpoint {
    address = "127.0.0.1"
    port    = 50051
    labels  = { version = "v1" }
  }
  upstream "billing/invoices" {
    local_port = 9002
  }
  upstream "cache" {
    local_port = 9003
  }
}

service "invoices" {
  namespace = "billing"
  endpoint {
    address = "10.1.0.1"
    port    = 7000
  }
}
`)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	svcs := file.Convert(cfg)
	byKey := map[discovery.ServiceKey]*discovery.Service{}
	for _, s := range svcs {
		byKey[s.ServiceKey] = s
	}
	if len(byKey) != 2 {
		t.Fatalf("Convert returned %v, want 2 services", svcs)
	}
	g := byKey[key("default", "greeter")]
	if g == nil || g.Protocol != discovery.ProtocolGRPC || len(g.Endpoints) != 1 {
		t.Fatalf("greeter = %+v", g)
	}
	e := g.Endpoints[0]
	if e.Identity != "spiffe://corp.example/ns/default/svc/greeter" {
		t.Errorf("identity = %q", e.Identity)
	}
	if !reflect.DeepEqual(e.Labels, map[string]string{"team": "hello", "version": "v1"}) {
		t.Errorf("endpoint labels = %v", e.Labels)
	}
	wantUps := []discovery.Upstream{{Service: key("billing", "invoices"), LocalPort: 9002}, {Service: key("default", "cache"), LocalPort: 9003}}
	if !reflect.DeepEqual(g.Upstreams, wantUps) {
		t.Errorf("upstreams = %+v, want %+v", g.Upstreams, wantUps)
	}
	inv := byKey[key("billing", "invoices")]
	if inv == nil || inv.Protocol != discovery.ProtocolTCP || inv.Endpoints[0].Identity != "spiffe://corp.example/ns/billing/svc/invoices" {
		t.Errorf("invoices = %+v", inv)
	}
}

func TestConvertEmpty(t *testing.T) {
	if got := file.Convert(&config.Config{}); len(got) != 0 {
		t.Errorf("Convert of an empty config = %v", got)
	}
}
