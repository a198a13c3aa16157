package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/test/meshtest"
)

func TestAdminAPI(t *testing.T) {
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: "../../examples/quickstart", Args: []string{"--check"}})

	var list struct {
		Version  string `json:"version"`
		Services []struct {
			Namespace, Name, Protocol string
			Endpoints                 int
		} `json:"services"`
	}
	srv.GetJSON(t, "/v1/services", &list)
	if list.Version == "" || len(list.Services) != 2 || list.Services[0].Name != "greeter" || list.Services[0].Protocol != "grpc" || list.Services[0].Endpoints != 2 {
		t.Fatalf("/v1/services = %+v", list)
	}

	var svc struct {
		Name      string `json:"name"`
		Endpoints []struct {
			Address     string            `json:"address"`
			Port        int               `json:"port"`
			Labels      map[string]string `json:"labels"`
			Identity    string            `json:"identity"`
			SidecarPort int               `json:"sidecar_port"`
			Health      string            `json:"health"`
		} `json:"endpoints"`
		Upstreams []struct {
			LocalPort int `json:"local_port"`
		} `json:"upstreams"`
	}
	srv.GetJSON(t, "/v1/services/default/web", &svc)
	if len(svc.Endpoints) != 1 || svc.Endpoints[0].SidecarPort != 21000 || svc.Endpoints[0].Health != "healthy" ||
		svc.Endpoints[0].Identity != "spiffe://bowline.local/ns/default/svc/web" || len(svc.Upstreams) != 1 || svc.Upstreams[0].LocalPort != 9191 {
		t.Fatalf("/v1/services/default/web = %+v", svc)
	}

	for _, path := range []string{"/v1/services/default/nope", "/v1/proxies/nope", "/v1/proxies/nope/config", "/v1/nothing"} {
		code, body := srv.Get(t, path)
		var e struct {
			Error string `json:"error"`
		}
		if code != http.StatusNotFound || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Errorf("GET %s: %d %s, want 404 with a JSON error", path, code, body)
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/v1/sources", "/v1/config", "/v1/proxies"} {
		if code, body := srv.Get(t, path); code != http.StatusOK {
			t.Errorf("GET %s: %d %s", path, code, body)
		}
	}
	_, body := srv.Get(t, "/metrics")
	for _, m := range []string{"bowline_catalog_services 2", "bowline_catalog_endpoints 3", `bowline_discovery_source_healthy{source="file"} 1`, "bowline_xds_connected_proxies 0"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}

	out, errOut, code := meshtest.Run(t, "services", "--admin-addr", srv.AdminAddr)
	if code != 0 || !strings.Contains(out, "greeter") || !strings.Contains(out, "web") {
		t.Fatalf("bowline services: exit %d\n%s%s", code, out, errOut)
	}
	assertConsistent(t, srv, "")
}
