package discovery

import (
	"fmt"
	"log/slog"
	"slices"
	"testing"
)

// mergeSvc is a gRPC service with the given labels and endpoints.
func mergeSvc(ns, name string, labels map[string]string, eps ...Endpoint) *Service {
	return &Service{ServiceKey: ServiceKey{Namespace: ns, Name: name}, Protocol: ProtocolGRPC, Labels: labels, Endpoints: eps}
}

func mergeEp(addr string, port uint32) Endpoint { return Endpoint{Address: addr, Port: port} }

// mergeResult merges states and returns the services by key, normalized the
// way a snapshot holds them.
func mergeResult(t *testing.T, states map[string][]*Service) map[ServiceKey]*Service {
	t.Helper()
	out := map[ServiceKey]*Service{}
	for _, s := range merge(slog.New(slog.DiscardHandler), states) {
		s.Normalize()
		if _, dup := out[s.ServiceKey]; dup {
			t.Fatalf("merge returned %s twice", s.ServiceKey)
		}
		out[s.ServiceKey] = s
	}
	return out
}

// endpointsBySource renders a service's endpoints as "source address:port".
func endpointsBySource(s *Service) []string {
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, fmt.Sprintf("%s %s:%d", e.Source, e.Address, e.Port))
	}
	slices.Sort(out)
	return out
}

var webKey = ServiceKey{Namespace: "shop", Name: "web"}

func TestMergeAcrossSourcesByNamespaceAndName(t *testing.T) {
	got := mergeResult(t, map[string][]*Service{
		"nomad":      {mergeSvc("shop", "web", nil, mergeEp("10.0.0.1", 8080))},
		"kubernetes": {mergeSvc("shop", "web", nil, mergeEp("10.1.0.1", 8080), mergeEp("10.1.0.2", 8080))},
		// Same name, other namespace: a different service.
		"file": {mergeSvc("default", "web", nil, mergeEp("127.0.0.1", 9000))},
	})
	web := got[webKey]
	if web == nil {
		t.Fatalf("shop/web missing: %v", got)
	}
	want := []string{"kubernetes 10.1.0.1:8080", "kubernetes 10.1.0.2:8080", "nomad 10.0.0.1:8080"}
	if g := endpointsBySource(web); !slices.Equal(g, want) {
		t.Errorf("shop/web endpoints = %v, want %v", g, want)
	}
	if !slices.Equal(web.Sources, []string{"kubernetes", "nomad"}) {
		t.Errorf("shop/web sources = %v", web.Sources)
	}
	if g := endpointsBySource(got[ServiceKey{"default", "web"}]); !slices.Equal(g, []string{"file 127.0.0.1:9000"}) {
		t.Errorf("default/web endpoints = %v", g)
	}
}

func TestMergeOptOut(t *testing.T) {
	optOut := map[string]string{LabelMerge: "false"}
	tests := []struct {
		name        string
		states      map[string][]*Service
		wantEps     []string
		wantSources []string
	}{
		{
			name: "the opted-out service is taken alone; its namesakes from other sources are left out",
			states: map[string][]*Service{
				"file":       {mergeSvc("shop", "web", nil, mergeEp("10.0.0.9", 8080))},
				"kubernetes": {mergeSvc("shop", "web", optOut, mergeEp("10.1.0.1", 8080))},
				"nomad":      {mergeSvc("shop", "web", nil, mergeEp("10.0.0.1", 8080))},
			},
			wantEps:     []string{"kubernetes 10.1.0.1:8080"},
			wantSources: []string{"kubernetes"},
		},
		{
			name: "when several sources opt out, the first by name wins",
			states: map[string][]*Service{
				"nomad":      {mergeSvc("shop", "web", optOut, mergeEp("10.0.0.1", 8080))},
				"kubernetes": {mergeSvc("shop", "web", optOut, mergeEp("10.1.0.1", 8080))},
			},
			wantEps:     []string{"kubernetes 10.1.0.1:8080"},
			wantSources: []string{"kubernetes"},
		},
		{
			name: "any other value merges",
			states: map[string][]*Service{
				"nomad":      {mergeSvc("shop", "web", map[string]string{LabelMerge: "true"}, mergeEp("10.0.0.1", 8080))},
				"kubernetes": {mergeSvc("shop", "web", nil, mergeEp("10.1.0.1", 8080))},
			},
			wantEps:     []string{"kubernetes 10.1.0.1:8080", "nomad 10.0.0.1:8080"},
			wantSources: []string{"kubernetes", "nomad"},
		},
		{
			name: "the empty namespace is the default one for the opt-out too",
			states: map[string][]*Service{
				"file":  {mergeSvc("", "web", optOut, mergeEp("10.0.0.9", 8080))},
				"nomad": {mergeSvc("default", "web", nil, mergeEp("10.0.0.1", 8080))},
			},
			wantEps:     []string{"file 10.0.0.9:8080"},
			wantSources: []string{"file"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mergeResult(t, tt.states)
			var svc *Service
			for _, s := range got {
				if s.Name == "web" {
					svc = s
				}
			}
			if len(got) != 1 || svc == nil {
				t.Fatalf("want exactly one web service, got %v", got)
			}
			if g := endpointsBySource(svc); !slices.Equal(g, tt.wantEps) {
				t.Errorf("endpoints = %v, want %v", g, tt.wantEps)
			}
			if !slices.Equal(svc.Sources, tt.wantSources) {
				t.Errorf("sources = %v, want %v", svc.Sources, tt.wantSources)
			}
		})
	}
}

func TestMergeOptOutLeavesOtherServicesOfTheSourceAlone(t *testing.T) {
	got := mergeResult(t, map[string][]*Service{
		"kubernetes": {mergeSvc("shop", "web", map[string]string{LabelMerge: "false"}, mergeEp("10.1.0.1", 8080))},
		"nomad": {
			mergeSvc("shop", "web", nil, mergeEp("10.0.0.1", 8080)),
			mergeSvc("shop", "cart", nil, mergeEp("10.0.0.2", 8080)),
		},
	})
	if g := endpointsBySource(got[ServiceKey{"shop", "cart"}]); !slices.Equal(g, []string{"nomad 10.0.0.2:8080"}) {
		t.Fatalf("shop/cart endpoints = %v", g)
	}
}

func TestMergeDeduplicatesEndpointsAcrossSources(t *testing.T) {
	degraded := mergeEp("10.0.0.1", 8080)
	degraded.Health = HealthDegraded
	behindSidecar := mergeEp("10.0.0.3", 8080)
	behindSidecar.SidecarPort = 21000
	got := mergeResult(t, map[string][]*Service{
		"nomad": {mergeSvc("shop", "web", nil,
			mergeEp("10.0.0.1", 8080),  // also from kubernetes: kubernetes sorts first and wins
			mergeEp("10.0.0.2", 8080),  // only here
			mergeEp("10.0.0.3", 21000), // kubernetes' sidecar address for 10.0.0.3:8080
		)},
		"kubernetes": {mergeSvc("shop", "web", nil,
			degraded,
			mergeEp("10.0.0.1", 9090), // other port: another endpoint
			behindSidecar,
		)},
	})
	web := got[webKey]
	want := []string{"kubernetes 10.0.0.1:8080", "kubernetes 10.0.0.1:9090", "kubernetes 10.0.0.3:8080", "nomad 10.0.0.2:8080"}
	if g := endpointsBySource(web); !slices.Equal(g, want) {
		t.Fatalf("endpoints = %v, want %v", g, want)
	}
	for _, e := range web.Endpoints {
		if e.Address == "10.0.0.1" && e.Port == 8080 && e.Health != HealthDegraded {
			t.Errorf("the kept duplicate must be the first source's, as it reported it: %+v", e)
		}
	}
	// Both sources still contributed to the service.
	if !slices.Equal(web.Sources, []string{"kubernetes", "nomad"}) {
		t.Errorf("sources = %v", web.Sources)
	}
}

// Duplicates within one source are the source's business (Normalize keeps
// one of identical ones); merge only arbitrates between sources.
func TestMergeKeepsOneSourcesOwnEndpoints(t *testing.T) {
	got := mergeResult(t, map[string][]*Service{
		"file": {mergeSvc("shop", "web", nil, mergeEp("10.0.0.1", 8080), mergeEp("10.0.0.2", 8080))},
	})
	if g := endpointsBySource(got[webKey]); !slices.Equal(g, []string{"file 10.0.0.1:8080", "file 10.0.0.2:8080"}) {
		t.Fatalf("endpoints = %v", g)
	}
}
