package consulagent

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestStartStopRestartKeepsState(t *testing.T) {
	a := Start(t)
	ctx := context.Background()
	if !strings.HasPrefix(a.Address(), "127.0.0.1:") {
		t.Fatalf("Address() = %q, want 127.0.0.1:<port>", a.Address())
	}

	req, err := http.NewRequest(http.MethodPut, a.URL()+"/v1/agent/service/register",
		strings.NewReader(`{"Name":"keep","ID":"keep-1","Port":8080,"Check":{"CheckID":"keep-ttl","TTL":"10m","Status":"passing"}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("register: %s", resp.Status)
	}

	a.Stop()
	if _, err := a.get(ctx, "/v1/status/leader"); err == nil {
		t.Fatal("stopped agent still answers")
	}
	a.Stop() // stopping twice is harmless

	start := time.Now()
	a.Restart()
	t.Logf("restart took %s", time.Since(start))
	body, err := a.get(ctx, "/v1/health/service/keep")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `"keep-1"`) || !strings.Contains(string(body), `"passing"`) {
		t.Fatalf("service lost across restart: %s", body)
	}

	a.Restart() // restarting a running agent works too
	if _, err := a.get(ctx, "/v1/status/leader"); err != nil {
		t.Fatal(err)
	}
}

func TestBinaryFromEnv(t *testing.T) {
	t.Setenv("BOWLINE_CONSUL_BIN", "/nonexistent/consul")
	if _, err := binary(); err == nil || !strings.Contains(err.Error(), "BOWLINE_CONSUL_BIN") {
		t.Fatalf("binary() error = %v, want one naming BOWLINE_CONSUL_BIN", err)
	}
}

func TestFreePortsDistinct(t *testing.T) {
	p, err := freePorts()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, port := range []int{p.HTTP, p.DNS, p.SerfLAN, p.SerfWAN, p.Server} {
		if port == 0 || seen[port] {
			t.Fatalf("ports not distinct: %+v", p)
		}
		seen[port] = true
	}
}
