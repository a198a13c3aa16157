package server

import (
	"strings"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/test/adsclient"
	"github.com/bowlinemesh/bowline/xds/translate"
)

func authzSidecarService(name string, port, sidecarPort uint32, identity string) *discovery.Service {
	return &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: name}, Protocol: discovery.ProtocolHTTP,
		Endpoints: []discovery.Endpoint{{Address: "127.0.0.1", Port: port, SidecarPort: sidecarPort, Identity: identity}}}
}

// Only the proxies of the destination get a push when its rules change, or
// when the principals of a service its rules name change.
func TestAuthorizationChangesReachOnlyTheDestination(t *testing.T) {
	services := func(frontendID string) []*discovery.Service {
		return []*discovery.Service{
			authzSidecarService("orders", 8080, 21000, ""), authzSidecarService("web", 8081, 21001, ""),
			authzSidecarService("frontend", 8082, 21002, frontendID),
		}
	}
	h := newHarness(t, services(""))
	h.connect(t, adsclient.Options{Node: sidecarNode(t, "orders-1", "orders", "frontend:9192")})
	h.connect(t, adsclient.Options{Node: sidecarNode(t, "web-1", "web", "orders:9191")})
	h.waitSynced(t, "orders-1")
	web := h.waitSynced(t, "web-1")

	// change applies a change and waits until orders-1 has ACKed a new
	// listener version; web-1 must not have been sent anything.
	change := func(what string, apply func()) {
		t.Helper()
		before := h.waitSynced(t, "orders-1")
		apply()
		deadline := time.Now().Add(5 * time.Second)
		for {
			p := h.waitSynced(t, "orders-1")
			if p.Acked["listeners"] != before.Acked["listeners"] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: orders' listener never changed", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if p, _ := h.srv.Proxy("web-1"); !equalVersions(p.Sent, web.Sent) {
			t.Fatalf("%s: web-1 was sent %v, had %v", what, p.Sent, web.Sent)
		}
	}
	rules := func(action, from string) config.FileSet {
		return config.FileSet{Source: "test", Files: []config.File{{Name: "authz.hcl", Content: []byte(`authorization "orders" {
  rule {
    action = "` + action + `"
    from { services = ["` + from + `"] }
  }
}
`)}}}
	}
	change("a rule about orders", func() { h.store.Update(rules("allow", "frontend")) })
	if res, _ := h.srv.ProxyResources("orders-1"); !strings.Contains(listenerJSON(t, res), "envoy.filters.http.rbac.allow") {
		t.Fatal("orders' inbound listener has no RBAC filter")
	}
	change("another rule about orders", func() { h.store.Update(rules("deny", "web")) })
	change("back to the first rule", func() { h.store.Update(rules("allow", "frontend")) })
	change("frontend's workloads presenting a service account", func() {
		h.src <- services(discovery.ServiceAccountIdentity(config.DefaultTrustDomain, "default", "fe"))
	})
	if res, _ := h.srv.ProxyResources("orders-1"); !strings.Contains(listenerJSON(t, res), "/sa/fe") {
		t.Fatal("orders' RBAC does not name frontend's service account")
	}
}

func equalVersions(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func listenerJSON(t *testing.T, res *translate.Resources) string {
	t.Helper()
	b, err := translate.JSON(&translate.Resources{Listeners: res.Listeners})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Two xDS-enabled gRPC servers of different services listening on the same
// address (every pod on 0.0.0.0:50051) get different RBAC, so they must not
// share a translation; gRPC clients of different services still do.
func TestGRPCServersOfDifferentServicesDoNotShare(t *testing.T) {
	server := []string{translate.ServerListenerPrefix + "0.0.0.0:50051"}
	p := func(name string, listeners []string) translate.Proxy {
		return translate.Proxy{Kind: translate.KindGRPC, Service: discovery.ServiceKey{Namespace: "default", Name: name}, Listeners: listeners}
	}
	if specKey(p("orders", server)) == specKey(p("payments", server)) {
		t.Fatal("servers of orders and payments share a translation")
	}
	if specKey(p("orders", []string{"greeter"})) != specKey(p("payments", []string{"greeter"})) {
		t.Fatal("clients of greeter no longer share a translation")
	}
}
