package server

import (
	"context"
	"slices"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bowlinemesh/bowline/discovery"
)

// TestDeltaReconnectSendsOnlyWhatChanged checks the delta protocol's
// initial_resource_versions, which let a proxy reconnect (to this replica or
// another, whose versions are the same since they derive from content)
// without being sent again what it holds: a reconnecting proxy is sent the
// resources whose version it has wrong, is told of those that are gone, and
// is sent nothing it has.
func TestDeltaReconnectSendsOnlyWhatChanged(t *testing.T) {
	h := newHarness(t, []*discovery.Service{grpcService("greeter", 5000), grpcService("other", 6000)})
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ads := discoverypb.NewAggregatedDiscoveryServiceClient(conn)
	node := sidecarNode(t, "web-1", "web", "greeter:9191,other:9292")
	const greeter, other, gone = "default/greeter", "default/other", "default/gone"

	open := func(initial map[string]string) (discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, context.CancelFunc) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		st, err := ads.DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoverypb.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType,
			ResourceNamesSubscribe: []string{greeter, other, gone}, InitialResourceVersions: initial}); err != nil {
			t.Fatal(err)
		}
		return st, cancel
	}
	recv := func(st discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) (versions map[string]string, removed []string) {
		t.Helper()
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		versions = map[string]string{}
		for _, r := range resp.GetResources() {
			versions[r.GetName()] = r.GetVersion()
		}
		return versions, resp.GetRemovedResources()
	}

	// A first connection learns the versions.
	st, cancel := open(nil)
	held, removed := recv(st)
	cancel()
	if len(held) != 2 || held[greeter] == "" || held[other] == "" || len(removed) != 0 {
		t.Fatalf("first connection got %v, removed %v: want greeter and other", held, removed)
	}

	// Reconnecting with other's version wrong and a resource that no
	// longer exists.
	st, cancel = open(map[string]string{greeter: held[greeter], other: "stale", gone: "1"})
	got, removed := recv(st)
	cancel()
	if len(got) != 1 || got[other] != held[other] {
		t.Errorf("reconnection with one stale version was sent %v, want only %s at %s", got, other, held[other])
	}
	if !slices.Equal(removed, []string{gone}) {
		t.Errorf("reconnection was told %v removed, want [%s]", removed, gone)
	}

	// Reconnecting with everything current: nothing is sent until greeter
	// changes, and then greeter alone.
	st, cancel = open(map[string]string{greeter: held[greeter], other: held[other]})
	defer cancel()
	h.src <- []*discovery.Service{grpcService("greeter", 5001), grpcService("other", 6000)}
	got, removed = recv(st)
	if len(got) != 1 || got[greeter] == "" || got[greeter] == held[greeter] || len(removed) != 0 {
		t.Errorf("an up-to-date reconnection's first response was %v, removed %v: want the changed greeter alone", got, removed)
	}
}
