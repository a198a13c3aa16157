package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/test/consulagent"
	"github.com/bowlinemesh/bowline/test/meshtest"
)

const consulKVPrefix = "bowline/config/"

// consulMesh is a real Consul agent and the real bowline binary following it
// (catalog and KV).
type consulMesh struct {
	agent  *consulagent.Agent
	consul *api.Client
	srv    *meshtest.Server
}

// startConsulMesh starts a Consul agent and bowline server with a config
// directory that holds only the consul block (and the mesh's trust domain).
func startConsulMesh(t *testing.T) *consulMesh {
	t.Helper()
	agent := consulagent.Start(t)
	c, err := api.NewClient(&api.Config{Address: agent.Address()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "consul.hcl", fmt.Sprintf(`mesh {
  trust_domain = "bowline.test"
}

consul {
  address   = %q
  kv_prefix = %q
}
`, agent.Address(), consulKVPrefix))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})
	return &consulMesh{agent: agent, consul: c, srv: srv}
}

// register registers an instance of greeter served by backend b, with a TTL
// check that passes until told otherwise.
func (m *consulMesh) register(t *testing.T, id string, b *meshtest.Backend, version string) {
	t.Helper()
	err := m.consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: "greeter", Address: "127.0.0.1", Port: b.Port,
		Meta:  map[string]string{"protocol": "grpc", "version": version},
		Check: &api.AgentServiceCheck{CheckID: id + "-ttl", TTL: "30m", Status: api.HealthPassing},
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	// The application's first heartbeat, as a TTL-checked service sends: the
	// agent persists a TTL check's state on update (and restores it after a
	// restart), while a check only registered as passing comes back critical.
	m.setCheck(t, id, api.HealthPassing)
}

func (m *consulMesh) deregister(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := m.consul.Agent().ServiceDeregister(id); err != nil {
			t.Fatalf("deregister %s: %v", id, err)
		}
	}
}

func (m *consulMesh) setCheck(t *testing.T, id, status string) {
	t.Helper()
	if err := m.consul.Agent().UpdateTTL(id+"-ttl", "set by the test", status); err != nil {
		t.Fatalf("check of %s -> %s: %v", id, status, err)
	}
}

func (m *consulMesh) kvPut(t *testing.T, key, value string) {
	t.Helper()
	if _, err := m.consul.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		t.Fatalf("kv put %s: %v", key, err)
	}
}

// consulService is a service as GET /v1/services/{namespace}/{name} shows it.
type consulService struct {
	Protocol  string `json:"protocol"`
	Upstreams []struct {
		Service struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"service"`
		LocalPort uint32 `json:"local_port"`
	} `json:"upstreams"`
	Endpoints []struct {
		Address     string            `json:"address"`
		Port        uint32            `json:"port"`
		Labels      map[string]string `json:"labels"`
		Health      string            `json:"health"`
		Identity    string            `json:"identity"`
		Region      string            `json:"region"`
		SidecarPort uint32            `json:"sidecar_port"`
		Source      string            `json:"source"`
	} `json:"endpoints"`
}

// sourcesStatus is GET /v1/sources.
type sourcesStatus struct {
	Discovery []struct {
		Name      string `json:"name"`
		Healthy   bool   `json:"healthy"`
		LastError string `json:"last_error"`
	} `json:"discovery"`
	ConfigErrors []struct {
		Name  string `json:"name"`
		Error string `json:"error"`
	} `json:"config_errors"`
}

// consulSource returns the consul source's health and error, and the KV
// source's error, from /v1/sources.
func (m *consulMesh) consulSource(t *testing.T) (found, healthy bool, lastErr, kvErr string) {
	t.Helper()
	var st sourcesStatus
	m.srv.GetJSON(t, "/v1/sources", &st)
	for _, s := range st.Discovery {
		if s.Name == "consul" {
			found, healthy, lastErr = true, s.Healthy, s.LastError
		}
	}
	for _, e := range st.ConfigErrors {
		if e.Name == "consul-kv:"+consulKVPrefix {
			kvErr = e.Error
		}
	}
	return found, healthy, lastErr, kvErr
}

// metric returns the value of one metric line of /metrics, or "" if absent.
func (m *consulMesh) metric(t *testing.T, series string) string {
	t.Helper()
	_, body := m.srv.Get(t, "/metrics")
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return v
		}
	}
	return ""
}

func TestConsulTrafficFollowsRegistrations(t *testing.T) {
	ctx := t.Context()
	b1, b2, b3 := meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2"), meshtest.StartBackend(t, "b3")
	m := startConsulMesh(t)
	m.register(t, "greeter-1", b1, "v1")

	c := meshtest.Dial(t, m.srv, "client", "greeter")
	meshtest.Eventually(t, 30*time.Second, func() error { return onlyOn(ctx, c, "b1") })

	t.Run("the catalog shows the Consul registration", func(t *testing.T) {
		var svc consulService
		m.srv.GetJSON(t, "/v1/services/default/greeter", &svc)
		if svc.Protocol != "grpc" || len(svc.Endpoints) != 1 {
			t.Fatalf("greeter: %+v", svc)
		}
		e := svc.Endpoints[0]
		if e.Address != "127.0.0.1" || e.Port != uint32(b1.Port) || e.Source != "consul" || e.Health != "healthy" ||
			e.Labels["version"] != "v1" || e.Identity != "spiffe://bowline.test/ns/default/svc/greeter" || e.Region != consulagent.Datacenter {
			t.Fatalf("endpoint %+v", e)
		}
		if found, healthy, _, kvErr := m.consulSource(t); !found || !healthy || kvErr != "" {
			t.Fatalf("/v1/sources: consul found=%v healthy=%v, kv error %q", found, healthy, kvErr)
		}
	})

	t.Run("scaling up spreads traffic over the new instances", func(t *testing.T) {
		start := time.Now()
		m.register(t, "greeter-2", b2, "v1")
		m.register(t, "greeter-3", b3, "v1")
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b1", "b2", "b3") })
		t.Logf("traffic reached the new instances %s after their registration", time.Since(start).Round(time.Millisecond))
	})

	t.Run("deregistering an instance takes it out of traffic", func(t *testing.T) {
		m.deregister(t, "greeter-3")
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b1", "b2") })
	})

	t.Run("a critical check takes an instance out, passing brings it back", func(t *testing.T) {
		m.setCheck(t, "greeter-2", api.HealthCritical)
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b1") })
		var svc consulService
		m.srv.GetJSON(t, "/v1/services/default/greeter", &svc)
		if len(svc.Endpoints) != 2 {
			t.Fatalf("an unhealthy instance stays in the catalog (marked unhealthy): %+v", svc.Endpoints)
		}
		for _, e := range svc.Endpoints {
			if want := map[uint32]string{uint32(b1.Port): "healthy", uint32(b2.Port): "unhealthy"}[e.Port]; e.Health != want {
				t.Errorf("endpoint on port %d: health %q, want %q", e.Port, e.Health, want)
			}
		}
		m.setCheck(t, "greeter-2", api.HealthPassing)
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b1", "b2") })
	})

	t.Run("deregistering every instance removes the service, registering brings it back", func(t *testing.T) {
		m.deregister(t, "greeter-1", "greeter-2")
		meshtest.Eventually(t, 10*time.Second, func() error {
			if code, _ := m.srv.Get(t, "/v1/services/default/greeter"); code != http.StatusNotFound {
				return fmt.Errorf("GET /v1/services/default/greeter: %d, want 404", code)
			}
			if id, err := c.Call(ctx); err == nil {
				return fmt.Errorf("a call still reached %s", id)
			}
			return nil
		})
		m.register(t, "greeter-3", b3, "v2")
		meshtest.Eventually(t, 30*time.Second, func() error { return onlyOn(ctx, c, "b3") })
	})
}

// servicePoller polls GET /v1/services/default/<name> and remembers the
// fewest endpoints (and healthy endpoints) it saw and any failed request.
type servicePoller struct {
	stop chan struct{}
	done chan struct{}

	mu            sync.Mutex
	polls         int
	fewest        int
	fewestHealthy int
	failures      []string
}

func pollService(adminAddr, name string) *servicePoller {
	p := &servicePoller{stop: make(chan struct{}), done: make(chan struct{}), fewest: -1, fewestHealthy: -1}
	url := "http://" + adminAddr + "/v1/services/default/" + name
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			n, healthy, err := countEndpoints(url)
			p.mu.Lock()
			p.polls++
			if err != nil {
				p.failures = append(p.failures, err.Error())
			} else {
				if p.fewest < 0 || n < p.fewest {
					p.fewest = n
				}
				if p.fewestHealthy < 0 || healthy < p.fewestHealthy {
					p.fewestHealthy = healthy
				}
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// countEndpoints returns how many endpoints, and how many healthy ones, a
// service has.
func countEndpoints(url string) (all, healthy int, err error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var svc consulService
	if err := json.Unmarshal(body, &svc); err != nil {
		return 0, 0, err
	}
	for _, e := range svc.Endpoints {
		if e.Health == "healthy" {
			healthy++
		}
	}
	return len(svc.Endpoints), healthy, nil
}

// finish stops the poller and returns what it saw.
func (p *servicePoller) finish() (polls, fewest, fewestHealthy int, failures []string) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.polls, p.fewest, p.fewestHealthy, p.failures
}

func TestConsulOutageIsFailStatic(t *testing.T) {
	ctx := t.Context()
	b1, b2, b3 := meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2"), meshtest.StartBackend(t, "b3")
	m := startConsulMesh(t)
	m.register(t, "greeter-1", b1, "v1")
	m.register(t, "greeter-2", b2, "v1")
	c := meshtest.Dial(t, m.srv, "client", "greeter")
	meshtest.Eventually(t, 30*time.Second, func() error { return onlyOn(ctx, c, "b1", "b2") })
	if v := m.metric(t, `bowline_discovery_source_healthy{source="consul"}`); v != "1" {
		t.Fatalf(`bowline_discovery_source_healthy{source="consul"} = %q, want 1`, v)
	}

	poller := pollService(m.srv.AdminAddr, "greeter")
	stopped := time.Now()
	m.agent.Stop()

	meshtest.Eventually(t, 30*time.Second, func() error {
		found, healthy, lastErr, kvErr := m.consulSource(t)
		if !found || healthy || lastErr == "" {
			return fmt.Errorf("/v1/sources: consul found=%v healthy=%v last_error=%q, want degraded", found, healthy, lastErr)
		}
		if !strings.HasPrefix(kvErr, "consul: ") {
			return fmt.Errorf("/v1/sources: KV config source error %q, want one", kvErr)
		}
		if v := m.metric(t, `bowline_discovery_source_healthy{source="consul"}`); v != "0" {
			return fmt.Errorf(`bowline_discovery_source_healthy{source="consul"} = %q, want 0`, v)
		}
		return nil
	})
	t.Logf("consul source degraded %s after the agent was told to stop", time.Since(stopped).Round(time.Millisecond))

	// Traffic keeps flowing to the last known endpoints.
	if err := onlyOn(ctx, c, "b1", "b2"); err != nil {
		t.Fatalf("while Consul is down: %v", err)
	}
	var svc consulService
	m.srv.GetJSON(t, "/v1/services/default/greeter", &svc)
	if len(svc.Endpoints) != 2 {
		t.Fatalf("while Consul is down the catalog must keep greeter's endpoints: %+v", svc.Endpoints)
	}

	restarted := time.Now()
	m.agent.Restart()
	meshtest.Eventually(t, 60*time.Second, func() error {
		found, healthy, lastErr, kvErr := m.consulSource(t)
		if !found || !healthy || kvErr != "" {
			return fmt.Errorf("/v1/sources: consul found=%v healthy=%v last_error=%q, kv error %q", found, healthy, lastErr, kvErr)
		}
		if v := m.metric(t, `bowline_discovery_source_healthy{source="consul"}`); v != "1" {
			return fmt.Errorf(`bowline_discovery_source_healthy{source="consul"} = %q, want 1`, v)
		}
		return nil
	})
	t.Logf("consul source healthy again %s after the restart began", time.Since(restarted).Round(time.Millisecond))

	// The watches work again: a registration after the restart gets traffic.
	m.register(t, "greeter-3", b3, "v1")
	meshtest.Eventually(t, 30*time.Second, func() error { return onlyOn(ctx, c, "b1", "b2", "b3") })

	polls, fewest, fewestHealthy, failures := poller.finish()
	t.Logf("%d polls of /v1/services/default/greeter across the outage; fewest endpoints seen: %d (healthy: %d)", polls, fewest, fewestHealthy)
	if len(failures) > 0 {
		t.Errorf("%d polls failed (greeter missing?), first: %s", len(failures), failures[0])
	}
	if polls < 10 || fewest < 2 || fewestHealthy < 2 {
		t.Errorf("greeter lost endpoints across the outage: fewest %d (healthy %d) over %d polls, want 2 throughout", fewest, fewestHealthy, polls)
	}
}

// routeHCL declares subsets v1 and v2 of greeter and a route splitting
// calls between them.
func routeHCL(w1, w2 int) string {
	return fmt.Sprintf(`subset "greeter" "v1" {
  labels = { version = "v1" }
}

subset "greeter" "v2" {
  labels = { version = "v2" }
}

route "greeter" {
  rule {
    split {
      subset = "v1"
      weight = %d
    }
    split {
      subset = "v2"
      weight = %d
    }
  }
}
`, w1, w2)
}

// configStatus is GET /v1/config.
type configStatus struct {
	Files []struct {
		Name  string `json:"name"`
		Stale bool   `json:"stale"`
	} `json:"files"`
	Rejected []struct {
		Name        string `json:"name"`
		Diagnostics []struct {
			File     string `json:"file"`
			Line     int    `json:"line"`
			Position string `json:"position"`
			Source   string `json:"source"`
			Summary  string `json:"summary"`
		} `json:"diagnostics"`
	} `json:"rejected"`
}

func TestConsulKVRules(t *testing.T) {
	ctx := t.Context()
	v1, v2 := meshtest.StartBackend(t, "v1"), meshtest.StartBackend(t, "v2")
	m := startConsulMesh(t)
	m.register(t, "greeter-1", v1, "v1")
	m.register(t, "greeter-2", v2, "v2")
	c := meshtest.Dial(t, m.srv, "client", "greeter")
	meshtest.Eventually(t, 30*time.Second, func() error { return onlyOn(ctx, c, "v1", "v2") })

	const key = consulKVPrefix + "routes.hcl"
	const file = "consul-kv:" + key

	t.Run("a route written to KV is served", func(t *testing.T) {
		start := time.Now()
		m.kvPut(t, key, routeHCL(0, 100))
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "v2") })
		t.Logf("the route took effect %s after the KV write", time.Since(start).Round(time.Millisecond))
		var cfg configStatus
		m.srv.GetJSON(t, "/v1/config", &cfg)
		names := map[string]bool{}
		for _, f := range cfg.Files {
			names[f.Name] = true
		}
		if !names[file] || len(cfg.Rejected) != 0 {
			t.Fatalf("/v1/config: want %s in force and nothing rejected: %+v", file, cfg)
		}
	})

	t.Run("an invalid route is rejected with the key and line, the last valid one keeps serving", func(t *testing.T) {
		invalid := routeHCL(0, 90)
		m.kvPut(t, key, invalid)
		wantLine := 1 + strings.Count(invalid[:strings.Index(invalid, "    split {")], "\n")
		var cfg configStatus
		meshtest.Eventually(t, 10*time.Second, func() error {
			m.srv.GetJSON(t, "/v1/config", &cfg)
			if len(cfg.Rejected) != 1 {
				return fmt.Errorf("want one rejected file: %+v", cfg.Rejected)
			}
			return nil
		})
		rej := cfg.Rejected[0]
		if rej.Name != file || len(rej.Diagnostics) == 0 {
			t.Fatalf("rejected %+v, want %s with diagnostics", rej, file)
		}
		d := rej.Diagnostics[0]
		wantPos := fmt.Sprintf("%s:%d:", file, wantLine)
		if d.File != file || d.Line != wantLine || !strings.HasPrefix(d.Position, wantPos) || !strings.Contains(d.Source, "split {") ||
			!strings.Contains(d.Summary, "weights") {
			t.Fatalf("diagnostic %+v, want position %s... quoting the split", d, wantPos)
		}
		stale := false
		for _, f := range cfg.Files {
			stale = stale || (f.Name == file && f.Stale)
		}
		if !stale {
			t.Fatalf("the last valid version of %s must keep serving, marked stale: %+v", file, cfg.Files)
		}
		if spread := c.Spread(ctx, 100); spread["v2"] != 100 {
			t.Fatalf("the last valid route must keep serving: %v", spread)
		}
		if v := m.metric(t, "bowline_config_rejected_files"); v != "1" {
			t.Fatalf("bowline_config_rejected_files = %q, want 1", v)
		}
	})

	t.Run("a valid change replaces it", func(t *testing.T) {
		m.kvPut(t, key, routeHCL(100, 0))
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "v1") })
		var cfg configStatus
		m.srv.GetJSON(t, "/v1/config", &cfg)
		if len(cfg.Rejected) != 0 {
			t.Fatalf("the rejection must clear: %+v", cfg.Rejected)
		}
	})

	t.Run("deleting the key removes the route", func(t *testing.T) {
		if _, err := m.consul.KV().Delete(key, nil); err != nil {
			t.Fatal(err)
		}
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "v1", "v2") })
	})
}

// TestConsulUnreachableAtStartup: bowline server starts and serves its other
// sources while Consul cannot be reached, showing the Consul sources failing.
func TestConsulUnreachableAtStartup(t *testing.T) {
	ctx := t.Context()
	b1 := meshtest.StartBackend(t, "b1")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "greeter.hcl", greeterHCL(b1))
	meshtest.WriteFile(t, dir, "consul.hcl", fmt.Sprintf("consul {\n  address   = \"127.0.0.1:%d\"\n  kv_prefix = %q\n}\n",
		meshtest.FreePort(t), consulKVPrefix))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir}) // waits for /readyz
	m := &consulMesh{srv: srv}
	meshtest.Eventually(t, 10*time.Second, func() error {
		found, healthy, lastErr, kvErr := m.consulSource(t)
		if !found || healthy || !strings.HasPrefix(lastErr, "consul: ") || !strings.HasPrefix(kvErr, "consul: read kv "+consulKVPrefix) {
			return fmt.Errorf("/v1/sources: consul found=%v healthy=%v last_error=%q, kv error %q", found, healthy, lastErr, kvErr)
		}
		return nil
	})
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 30*time.Second, func() error { return onlyOn(ctx, c, "b1") })
}
