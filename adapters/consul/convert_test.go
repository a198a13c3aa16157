package consul

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/discovery"
)

// loadEntries reads a captured /v1/health/service/<name> response.
func loadEntries(t *testing.T, name string) []*api.ServiceEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "health-"+name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var list []*api.ServiceEntry
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return list
}

func TestConvertCaptured(t *testing.T) {
	const td = "bowline.test"
	web1 := discovery.Endpoint{
		Address: "127.0.0.1", Port: 8080,
		Labels:   map[string]string{"version": "v1", "tags": "primary,v1", "protocol": "http", "team": "payments"},
		Locality: discovery.Locality{Region: "dc1", Zone: "zone-a"},
		Health:   discovery.HealthHealthy, Identity: "spiffe://bowline.test/ns/default/svc/web", Weight: 1,
	}
	web2 := discovery.Endpoint{
		Address: "10.0.0.2", Port: 8080,
		Labels:   map[string]string{"version": "v2"},
		Locality: discovery.Locality{Region: "dc1", Zone: "zone-a"},
		Health:   discovery.HealthDegraded, Identity: "spiffe://bowline.test/ns/default/svc/web", Weight: 1,
	}
	web1Sidecar := web1
	web1Sidecar.SidecarPort = 21000
	webKey := discovery.ServiceKey{Namespace: "default", Name: "web"}
	apiID := "spiffe://bowline.test/ns/default/svc/api"
	zoneA := discovery.Locality{Region: "dc1", Zone: "zone-a"}

	tests := []struct {
		name        string
		files       []string
		trustDomain string
		want        []*discovery.Service
		// wantWarnings are substrings, one per expected warning, in order.
		wantWarnings []string
	}{{
		name:        "instances with their sidecar folded in",
		files:       []string{"web", "web-sidecar-proxy"},
		trustDomain: td,
		want: []*discovery.Service{{
			ServiceKey: webKey, Protocol: discovery.ProtocolHTTP,
			Upstreams: []discovery.Upstream{{Service: discovery.ServiceKey{Namespace: "default", Name: "api"}, LocalPort: 9191}},
			Endpoints: []discovery.Endpoint{web2, web1Sidecar},
		}},
		// web-2 declares no protocol: tcp, one vote against web-1's http;
		// ties go to the name that sorts first.
		wantWarnings: []string{"instances disagree on the protocol"},
	}, {
		name:        "instances without their sidecar",
		files:       []string{"web"},
		trustDomain: td,
		want: []*discovery.Service{{
			ServiceKey: webKey, Protocol: discovery.ProtocolHTTP,
			Endpoints: []discovery.Endpoint{web2, web1},
		}},
		wantWarnings: []string{"instances disagree on the protocol"},
	}, {
		name:  "no trust domain, no identity",
		files: []string{"web"},
		want: []*discovery.Service{{
			ServiceKey: webKey, Protocol: discovery.ProtocolHTTP,
			Endpoints: []discovery.Endpoint{
				func() discovery.Endpoint { e := web2; e.Identity = ""; return e }(),
				func() discovery.Endpoint { e := web1; e.Identity = ""; return e }(),
			},
		}},
		wantWarnings: []string{"instances disagree on the protocol"},
	}, {
		name:        "meta sidecar port and upstreams, weights, critical and maintenance",
		files:       []string{"api"},
		trustDomain: td,
		want: []*discovery.Service{{
			ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "api"},
			Protocol:   discovery.ProtocolGRPC, // two grpc against one invalid (tcp)
			Upstreams: []discovery.Upstream{
				{Service: discovery.ServiceKey{Namespace: "billing", Name: "ledger"}, LocalPort: 7000},
				{Service: discovery.ServiceKey{Namespace: "default", Name: "db"}, LocalPort: 5432},
			},
			Endpoints: []discovery.Endpoint{{
				Address: "127.0.0.1", Port: 9000,
				Labels:   map[string]string{"tags": "canary", "version": "v3", "team": "core", "protocol": "bogus"},
				Locality: zoneA, Health: discovery.HealthHealthy, Identity: apiID, Weight: 5, SidecarPort: 21001,
			}, {
				Address: "127.0.0.1", Port: 9001,
				Labels:   map[string]string{"protocol": "grpc"},
				Locality: zoneA, Health: discovery.HealthUnhealthy, Identity: apiID, Weight: 1,
			}, {
				Address: "127.0.0.1", Port: 9002,
				Labels:   map[string]string{"protocol": "grpc"},
				Locality: zoneA, Health: discovery.HealthUnhealthy, Identity: apiID, Weight: 1,
			}},
		}},
		wantWarnings: []string{
			`instance api-1: meta protocol: unknown protocol "bogus"`,
			`instance api-2: meta bowline-sidecar-port: "notaport" is not a port number`,
			`"broken" is not name:port`,
			`":12" is not name:port`,
			`"x:99999": "99999" is not a port number`,
			"instances disagree on the protocol",
		},
	}, {
		name:        "external node, no checks, proxy registered without a destination ID",
		files:       []string{"db", "db-proxy"},
		trustDomain: td,
		want: []*discovery.Service{{
			ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "db"},
			Protocol:   discovery.ProtocolTCP,
			Upstreams:  []discovery.Upstream{{Service: discovery.ServiceKey{Namespace: "default", Name: "audit"}, LocalPort: 6000}},
			Endpoints: []discovery.Endpoint{{
				Address: "10.1.0.5", Port: 5432,
				Labels:   map[string]string{"tags": "primary", "protocol": "tcp", "version": "15"},
				Locality: discovery.Locality{Region: "dc1", Zone: "zone-b"},
				Health:   discovery.HealthHealthy, Identity: "spiffe://bowline.test/ns/default/svc/db", Weight: 1, SidecarPort: 20000,
			}},
		}},
	}, {
		name:  "gateways and proxies alone make no service",
		files: []string{"mesh-gateway", "db-proxy", "web-sidecar-proxy"},
		want:  nil,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			byName := map[string]entries{}
			var warns []string
			for _, f := range tt.files {
				ents, w := convertEntries(f, loadEntries(t, f), convertOptions{TrustDomain: tt.trustDomain, Datacenter: "fallback"})
				byName[f] = ents
				warns = append(warns, w...)
			}
			got := buildServices(byName)
			for _, s := range got {
				s.Normalize()
			}
			for _, s := range tt.want {
				s.Normalize()
			}
			if !reflect.DeepEqual(got, tt.want) {
				g, _ := json.MarshalIndent(got, "", "  ")
				w, _ := json.MarshalIndent(tt.want, "", "  ")
				t.Errorf("services:\ngot  %s\nwant %s", g, w)
			}
			if len(warns) != len(tt.wantWarnings) {
				t.Fatalf("warnings:\n%s\nwant %d matching %q", strings.Join(warns, "\n"), len(tt.wantWarnings), tt.wantWarnings)
			}
			for i, w := range warns {
				if !strings.Contains(w, tt.wantWarnings[i]) {
					t.Errorf("warning %d = %q, want it to contain %q", i, w, tt.wantWarnings[i])
				}
			}
		})
	}
}

// TestBuildServicesSharesNothing checks that two states built from the same
// results can be modified independently (the catalog normalizes what it gets).
func TestBuildServicesSharesNothing(t *testing.T) {
	ents, _ := convertEntries("web", loadEntries(t, "web"), convertOptions{})
	byName := map[string]entries{"web": ents}
	a, b := buildServices(byName), buildServices(byName)
	a[0].Endpoints[0].Labels["version"] = "changed"
	a[0].Endpoints[0].Port = 1
	if b[0].Endpoints[0].Labels["version"] == "changed" || b[0].Endpoints[0].Port == 1 {
		t.Fatal("states built from the same results share memory")
	}
	if again := buildServices(byName); again[0].Endpoints[0].Labels["version"] == "changed" {
		t.Fatal("a built state shares memory with the results")
	}
}

func TestConvertSynthetic(t *testing.T) {
	node := func(name string) *api.Node {
		return &api.Node{Node: name, Address: "10.0.0.1", Meta: map[string]string{}}
	}
	typical := func(n, id string, port int) *api.ServiceEntry {
		return &api.ServiceEntry{Node: node(n), Service: &api.AgentService{ID: id, Service: "svc", Port: port, Namespace: "team-a", Weights: api.AgentWeights{Passing: 1, Warning: 1}}}
	}
	proxy := func(n, id, destID string, port int) *api.ServiceEntry {
		return &api.ServiceEntry{Node: node(n), Service: &api.AgentService{
			Kind: api.ServiceKindConnectProxy, ID: id, Service: "svc-sidecar-proxy", Port: port,
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "svc", DestinationServiceID: destID},
		}}
	}
	list := []*api.ServiceEntry{
		typical("n1", "a", 80),
		typical("n1", "b", 81),
		typical("n2", "c", 82),
		typical("n3", "noport", 0),
		nil,
		{Node: node("n1")},
	}
	proxies := []*api.ServiceEntry{
		proxy("n1", "pa", "", 2000),   // two instances on n1: ambiguous, not folded
		proxy("n2", "pc", "c", 2001),  // folded into c
		proxy("n2", "pc2", "c", 2002), // a second proxy for c: the first one wins
		proxy("n9", "px", "x", 2003),  // fronts nothing known
		{Node: node("n2"), Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, ID: "bad", Port: 1}},
	}
	ents, warns := convertEntries("svc", list, convertOptions{TrustDomain: "td", Datacenter: "dc9"})
	pents, pwarns := convertEntries("svc-sidecar-proxy", proxies, convertOptions{})
	if len(warns) != 1 || !strings.Contains(warns[0], "noport") {
		t.Errorf("warnings = %q, want one about the instance without a port", warns)
	}
	if len(pwarns) != 1 || !strings.Contains(pwarns[0], "names no destination") {
		t.Errorf("proxy warnings = %q, want one about the proxy without destination", pwarns)
	}
	got := buildServices(map[string]entries{"svc": ents, "svc-sidecar-proxy": pents})
	if len(got) != 1 {
		t.Fatalf("got %d services, want 1", len(got))
	}
	svc := got[0]
	if svc.ServiceKey != (discovery.ServiceKey{Namespace: "team-a", Name: "svc"}) {
		t.Errorf("key = %v, want team-a/svc", svc.ServiceKey)
	}
	sidecars := map[uint32]uint32{}
	for _, e := range svc.Endpoints {
		sidecars[e.Port] = e.SidecarPort
		if e.Identity != "spiffe://td/ns/team-a/svc/svc" {
			t.Errorf("identity = %q", e.Identity)
		}
		if e.Region != "dc9" {
			t.Errorf("region = %q, want the configured datacenter when the node names none", e.Region)
		}
	}
	if want := map[uint32]uint32{80: 0, 81: 0, 82: 2001}; !reflect.DeepEqual(sidecars, want) {
		t.Errorf("sidecar ports by port = %v, want %v", sidecars, want)
	}
}

func TestLabels(t *testing.T) {
	tests := []struct {
		tags []string
		meta map[string]string
		want map[string]string
	}{
		{nil, nil, nil},
		{[]string{"b", "a", "b", ""}, nil, map[string]string{"tags": "a,b"}},
		{[]string{"version=v1", "=x", "k="}, nil, map[string]string{"version": "v1", "k": "", "tags": "=x"}},
		{[]string{"version=v1"}, map[string]string{"version": "v2", "bowline-upstreams": "a:1"}, map[string]string{"version": "v2"}},
		{[]string{"plain"}, map[string]string{"tags": "from-meta"}, map[string]string{"tags": "from-meta"}},
	}
	for _, tt := range tests {
		if got := labels(tt.tags, tt.meta); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("labels(%q, %v) = %v, want %v", tt.tags, tt.meta, got, tt.want)
		}
	}
}

func TestHealth(t *testing.T) {
	check := func(id, status string) *api.HealthCheck { return &api.HealthCheck{CheckID: id, Status: status} }
	tests := []struct {
		checks api.HealthChecks
		want   discovery.Health
	}{
		{nil, discovery.HealthHealthy},
		{api.HealthChecks{check("a", api.HealthPassing), check("serfHealth", api.HealthPassing)}, discovery.HealthHealthy},
		{api.HealthChecks{check("a", api.HealthPassing), check("b", api.HealthWarning)}, discovery.HealthDegraded},
		{api.HealthChecks{check("a", api.HealthWarning), check("serfHealth", api.HealthCritical)}, discovery.HealthUnhealthy},
		{api.HealthChecks{check(api.NodeMaint, api.HealthCritical)}, discovery.HealthUnhealthy},
		{api.HealthChecks{check("a", "mystery")}, discovery.HealthUnhealthy},
	}
	for i, tt := range tests {
		if got := health(tt.checks); got != tt.want {
			t.Errorf("case %d: health = %v, want %v", i, got, tt.want)
		}
	}
}

func TestParseUpstreams(t *testing.T) {
	var warns []string
	got := parseUpstreams(" a:1 , ns/b:2,,c,d:0,/:3,e:x ", "home", func(s string) { warns = append(warns, s) })
	want := []discovery.Upstream{
		{Service: discovery.ServiceKey{Namespace: "home", Name: "a"}, LocalPort: 1},
		{Service: discovery.ServiceKey{Namespace: "ns", Name: "b"}, LocalPort: 2},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("upstreams = %v, want %v", got, want)
	}
	if len(warns) != 4 {
		t.Errorf("warnings = %q, want 4 (c, d:0, /:3, e:x)", warns)
	}
}
