package consul

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/bowlinemesh/bowline/test/consulagent"
)

var capture = flag.Bool("capture", false, "re-capture testdata/health-*.json from a real Consul agent")

// captured lists the services whose /v1/health/service responses
// convert_test.go reads.
var captured = []string{"web", "web-sidecar-proxy", "api", "db", "db-proxy", "mesh-gateway"}

// TestCaptureTestdata rebuilds the captured responses under testdata/ from a
// real agent: go test ./adapters/consul -run TestCaptureTestdata -capture
func TestCaptureTestdata(t *testing.T) {
	if !*capture {
		t.Skip("run with -capture to re-capture testdata")
	}
	a := consulagent.Start(t)
	put := func(path, body string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPut, a.URL()+path, bytes.NewBufferString(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT %s: %s: %s", path, resp.Status, b)
		}
	}
	// web: two instances on the agent's node; web-1 with a Connect sidecar
	// declaring an upstream, web-2 with its own address and a warning check.
	put("/v1/agent/service/register", `{"Name":"web","ID":"web-1","Port":8080,"Tags":["v1","version=v1","primary"],
		"Meta":{"protocol":"http","team":"payments"},"Check":{"CheckID":"web-1-ttl","TTL":"1h","Status":"passing"},
		"Connect":{"SidecarService":{"Port":21000,"Proxy":{"Upstreams":[{"DestinationName":"api","LocalBindPort":9191}]}}}}`)
	put("/v1/agent/service/register", `{"Name":"web","ID":"web-2","Address":"10.0.0.2","Port":8080,"Meta":{"version":"v2"},
		"Check":{"CheckID":"web-2-ttl","TTL":"1h","Status":"warning"}}`)
	// api: protocols that disagree (one invalid), sidecar port and upstreams
	// in meta (some malformed), weights, a critical and a maintained instance.
	put("/v1/agent/service/register", `{"Name":"api","ID":"api-1","Port":9000,"Tags":["canary","version=v3","team=core"],
		"Meta":{"protocol":"bogus","bowline-sidecar-port":"21001","bowline-upstreams":"db:5432,billing/ledger:7000"},
		"Weights":{"Passing":5,"Warning":2},"Check":{"CheckID":"api-1-ttl","TTL":"1h","Status":"passing"}}`)
	put("/v1/agent/service/register", `{"Name":"api","ID":"api-2","Port":9001,
		"Meta":{"protocol":"grpc","bowline-sidecar-port":"notaport","bowline-upstreams":"db:5432,broken,:12,x:99999"},
		"Check":{"CheckID":"api-2-ttl","TTL":"1h","Status":"critical"}}`)
	put("/v1/agent/service/register", `{"Name":"api","ID":"api-3","Port":9002,"Meta":{"protocol":"grpc"},
		"Check":{"CheckID":"api-3-ttl","TTL":"1h","Status":"passing"}}`)
	put("/v1/agent/service/maintenance/api-3?enable=true&reason=upgrade", ``)
	// db: an external service on another node (zone-b) with no checks, and a
	// proxy registered in the catalog with a destination name but no ID.
	put("/v1/catalog/register", `{"Datacenter":"dc1","Node":"db-node","Address":"10.1.0.5","NodeMeta":{"zone":"zone-b"},
		"Service":{"ID":"db-1","Service":"db","Port":5432,"Tags":["primary"],"Meta":{"protocol":"tcp","version":"15"}}}`)
	put("/v1/catalog/register", `{"Datacenter":"dc1","Node":"db-node","Address":"10.1.0.5","NodeMeta":{"zone":"zone-b"},
		"Service":{"Kind":"connect-proxy","ID":"db-1-proxy","Service":"db-proxy","Port":20000,
		"Proxy":{"DestinationServiceName":"db","Upstreams":[{"DestinationName":"audit","LocalBindPort":6000}]}}}`)
	// a mesh gateway, which is not a workload.
	put("/v1/catalog/register", `{"Datacenter":"dc1","Node":"gw-node","Address":"10.2.0.1",
		"Service":{"Kind":"mesh-gateway","ID":"mgw","Service":"mesh-gateway","Port":8443}}`)

	for _, name := range captured {
		resp, err := http.Get(a.URL() + "/v1/health/service/" + name)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := json.Indent(&out, raw, "", "  "); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out.WriteByte('\n')
		if err := os.WriteFile(filepath.Join("testdata", "health-"+name+".json"), out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
