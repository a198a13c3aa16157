package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bowlinemesh/bowline/adapters/nomad/nomadtest"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/test/adsclient"
	"github.com/bowlinemesh/bowline/test/meshtest"
)

// nomadGreeter is a gRPC job whose service block declares the mesh
// attributes in its meta, the way examples/nomad does.
func nomadGreeter(version string, extraMeta map[string]string) nomadtest.Job {
	meta := map[string]string{"protocol": "grpc", "version": version}
	maps.Copy(meta, extraMeta)
	return nomadtest.Job{ID: "greeter", Services: []nomadtest.Service{{Name: "greeter", PortLabel: "grpc", Tags: []string{"mesh"}, Meta: meta}}}
}

// startNomadMesh starts `bowline server` (the binary, with args) on a config
// directory whose nomad block points at the double.
func startNomadMesh(t *testing.T, nomad *nomadtest.Server, args ...string) *meshtest.Server {
	t.Helper()
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "mesh.hcl", fmt.Sprintf(`
mesh {
  trust_domain = "bowline.local"
}

nomad {
  address = %q
}
`, nomad.URL()))
	return meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: args})
}

// nomadOnly waits until n calls in a row are answered by the given backends
// alone, every one of them answering at least once.
func nomadOnly(ctx context.Context, c *meshtest.Client, n int, ids ...string) error {
	seen := map[string]bool{}
	for range n {
		id, err := c.Call(ctx)
		if err != nil {
			return err
		}
		if !slices.Contains(ids, id) {
			return fmt.Errorf("backend %s still receives traffic (want only %v)", id, ids)
		}
		seen[id] = true
	}
	if len(seen) != len(ids) {
		return fmt.Errorf("only %v answered, want all of %v", slices.Sorted(maps.Keys(seen)), ids)
	}
	return nil
}

// nomadAPIService is a service as GET /v1/services/{ns}/{name} shows it.
type nomadAPIService struct {
	Protocol  discovery.Protocol `json:"protocol"`
	Endpoints []struct {
		Address     string            `json:"address"`
		Port        uint32            `json:"port"`
		Labels      map[string]string `json:"labels"`
		Region      string            `json:"region"`
		Zone        string            `json:"zone"`
		Health      string            `json:"health"`
		Identity    string            `json:"identity"`
		SidecarPort uint32            `json:"sidecar_port"`
		Source      string            `json:"source"`
	} `json:"endpoints"`
}

// nomadService reads a service from the admin API.
func nomadService(t *testing.T, srv *meshtest.Server, name string) (nomadAPIService, bool) {
	t.Helper()
	code, body := srv.Get(t, "/v1/services/default/"+name)
	if code != 200 {
		return nomadAPIService{}, false
	}
	var svc nomadAPIService
	if err := json.Unmarshal(body, &svc); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return svc, true
}

// nomadPorts lists a service's endpoint ports, sorted, and fails on
// duplicates.
func nomadPorts(svc nomadAPIService) ([]int, error) {
	var ports []int
	for _, e := range svc.Endpoints {
		ports = append(ports, int(e.Port))
	}
	slices.Sort(ports)
	if len(slices.Compact(slices.Clone(ports))) != len(ports) {
		return ports, fmt.Errorf("duplicate endpoints: %v", ports)
	}
	return ports, nil
}

func nomadWaitPorts(t *testing.T, srv *meshtest.Server, name string, want ...int) {
	t.Helper()
	slices.Sort(want)
	meshtest.Eventually(t, 10*time.Second, func() error {
		svc, ok := nomadService(t, srv, name)
		if !ok {
			return fmt.Errorf("no service %s", name)
		}
		got, err := nomadPorts(svc)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s has ports %v, want %v", name, got, want)
		}
		return nil
	})
}

func TestNomadTrafficFollowsRegistrations(t *testing.T) {
	ctx := t.Context()
	b1, b2, b3 := meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2"), meshtest.StartBackend(t, "b3")
	b2side := meshtest.StartBackend(t, "b2-sidecar")
	nomad := nomadtest.Start(t, nomadtest.Options{})
	nomad.SubmitJob(nomadGreeter("v1", nil))
	a1 := nomad.StartAlloc("", "greeter", map[string]int{"grpc": b1.Port})
	nomad.StartAlloc("", "greeter", map[string]int{"grpc": b2.Port, "mesh": b2side.Port})

	srv := startNomadMesh(t, nomad)
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })
	meshtest.Eventually(t, 5*time.Second, func() error { return nomadOnly(ctx, c, 60, "b1", "b2") })

	svc, _ := nomadService(t, srv, "greeter")
	if svc.Protocol != discovery.ProtocolGRPC || len(svc.Endpoints) != 2 {
		t.Fatalf("greeter: %+v", svc)
	}
	for _, e := range svc.Endpoints {
		if e.Labels["version"] != "v1" || e.Identity != "spiffe://bowline.local/ns/default/svc/greeter" || e.Region != "dc1" || e.Source != "nomad" || e.Health != "healthy" {
			t.Fatalf("endpoint %+v: want version v1, the SPIFFE identity, region dc1, source nomad", e)
		}
	}

	t.Run("a scale-up gets traffic", func(t *testing.T) {
		start := time.Now()
		nomad.StartAlloc("", "greeter", map[string]int{"grpc": b3.Port})
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 60, "b1", "b2", "b3") })
		t.Logf("a new Nomad registration received traffic %s after it was registered", time.Since(start).Round(time.Millisecond))
	})

	t.Run("a deregistered instance stops getting traffic", func(t *testing.T) {
		start := time.Now()
		nomad.StopAlloc(a1)
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 30, "b2", "b3") })
		t.Logf("traffic left a deregistered instance %s after the deregistration", time.Since(start).Round(time.Millisecond))
	})

	t.Run("meta.version from the job spec is the endpoints' version label", func(t *testing.T) {
		start := time.Now()
		nomad.SubmitJob(nomadGreeter("v2", nil)) // applied in place: no new registration
		meshtest.Eventually(t, 10*time.Second, func() error {
			svc, _ := nomadService(t, srv, "greeter")
			for _, e := range svc.Endpoints {
				if e.Labels["version"] != "v2" {
					return fmt.Errorf("endpoint %s:%d has version %q", e.Address, e.Port, e.Labels["version"])
				}
			}
			return nil
		})
		t.Logf("an in-place meta change reached the catalog in %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("traffic follows a meta change: the sidecar port", func(t *testing.T) {
		// b2's allocation has a port "mesh"; declaring it the sidecar port
		// sends its traffic there.
		nomad.SubmitJob(nomadGreeter("v2", map[string]string{"bowline-sidecar-port": "mesh"}))
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 60, "b2-sidecar", "b3") })
		nomad.SubmitJob(nomadGreeter("v2", nil))
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 60, "b2", "b3") })
	})

	t.Run("a stopped job leaves the catalog", func(t *testing.T) {
		nomad.StopJob("", "greeter")
		meshtest.Eventually(t, 10*time.Second, func() error {
			if _, ok := nomadService(t, srv, "greeter"); ok {
				return errors.New("greeter is still in the catalog")
			}
			return nil
		})
	})
}

// nomadVersionRoute routes greeter: calls with x-version: <header> go to
// that subset, the others to dflt.
func nomadVersionRoute(header, dflt string) string {
	return fmt.Sprintf(`
route "greeter" {
  rule {
    match {
      header "x-version" {
        exact = %q
      }
    }
    destination {
      subset = %q
    }
  }
  rule {
    destination {
      subset = %q
    }
  }
}
`, header, header, dflt)
}

// meta.version from the job spec selects subsets: two allocations of
// greeter, one from a job whose service block says version v1, one from a
// canary job that says v2 (one Nomad service, two job specs), are split into
// the subsets v1 and v2, and routes send traffic by version; a route change
// and a version change in the job move the traffic.
func TestNomadVersionSelectsSubsets(t *testing.T) {
	ctx := t.Context()
	bv1, bv2 := meshtest.StartBackend(t, "b-v1"), meshtest.StartBackend(t, "b-v2")
	nomad := nomadtest.Start(t, nomadtest.Options{})
	canary := func(version string) nomadtest.Job {
		j := nomadGreeter(version, nil)
		j.ID = "greeter-canary"
		return j
	}
	nomad.SubmitJob(nomadGreeter("v1", nil))
	nomad.SubmitJob(canary("v2"))
	nomad.StartAlloc("", "greeter", map[string]int{"grpc": bv1.Port})
	nomad.StartAlloc("", "greeter-canary", map[string]int{"grpc": bv2.Port})

	srv := startNomadMesh(t, nomad, "--check")
	meshtest.WriteFile(t, srv.ConfigDir, "subsets.hcl", `
subset "greeter" "v1" {
  labels = { version = "v1" }
}

subset "greeter" "v2" {
  labels = { version = "v2" }
}
`)
	meshtest.WriteFile(t, srv.ConfigDir, "route.hcl", nomadVersionRoute("v1", "v2"))
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })

	// The endpoints carry the version of their own job's service block.
	svc, _ := nomadService(t, srv, "greeter")
	versions := map[uint32]string{}
	for _, e := range svc.Endpoints {
		versions[e.Port] = e.Labels["version"]
	}
	if want := map[uint32]string{uint32(bv1.Port): "v1", uint32(bv2.Port): "v2"}; !maps.Equal(versions, want) {
		t.Fatalf("versions by port %v, want %v", versions, want)
	}

	v1ctx := metadata.AppendToOutgoingContext(ctx, "x-version", "v1")
	t.Run("everything to v2, x-version: v1 to v1", func(t *testing.T) {
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 60, "b-v2") })
		if err := nomadOnly(v1ctx, c, 30, "b-v1"); err != nil {
			t.Fatalf("x-version: v1: %v", err)
		}
	})

	t.Run("a new route: everything to v1, x-version: v2 to v2", func(t *testing.T) {
		meshtest.WriteFile(t, srv.ConfigDir, "route.hcl", nomadVersionRoute("v2", "v1"))
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 60, "b-v1") })
		v2ctx := metadata.AppendToOutgoingContext(ctx, "x-version", "v2")
		if err := nomadOnly(v2ctx, c, 30, "b-v2"); err != nil {
			t.Fatalf("x-version: v2: %v", err)
		}
	})

	t.Run("the canary job says v1: the v1 subset has both allocations", func(t *testing.T) {
		nomad.SubmitJob(canary("v1")) // applied in place
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 60, "b-v1", "b-v2") })
		if err := nomadOnly(v1ctx, c, 60, "b-v1", "b-v2"); err != nil {
			t.Fatalf("x-version: v1: %v", err)
		}
	})
}

// A nomad block without an address follows NOMAD_ADDR, as Nomad's CLI does.
func TestNomadAddressFromEnvironment(t *testing.T) {
	b1 := meshtest.StartBackend(t, "b1")
	nomad := nomadtest.Start(t, nomadtest.Options{})
	nomad.SubmitJob(nomadGreeter("v1", nil))
	nomad.StartAlloc("", "greeter", map[string]int{"grpc": b1.Port})
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "mesh.hcl", "mesh {\n  trust_domain = \"bowline.local\"\n}\n\nnomad {}\n")
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Env: []string{"NOMAD_ADDR=" + nomad.URL()}})
	nomadWaitPorts(t, srv, "greeter", b1.Port)
	if st, err := nomadSourceStatus(t, srv); err != nil || !st.Healthy {
		t.Fatalf("nomad source %+v, %v: want healthy", st, err)
	}
}

// A dropped event stream resyncs: changes made while it was down arrive,
// nothing is lost or duplicated; a Nomad restarted at a lower index is
// followed as well.
func TestNomadStreamDropResyncs(t *testing.T) {
	ctx := t.Context()
	b := []*meshtest.Backend{
		meshtest.StartBackend(t, "b0"), meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2"),
		meshtest.StartBackend(t, "b3"), meshtest.StartBackend(t, "b4"),
	}
	nomad := nomadtest.Start(t, nomadtest.Options{Index: 500})
	nomad.SubmitJob(nomadGreeter("v1", nil))
	a0 := nomad.StartAlloc("", "greeter", map[string]int{"grpc": b[0].Port})
	nomad.StartAlloc("", "greeter", map[string]int{"grpc": b[1].Port})
	srv := startNomadMesh(t, nomad)
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })
	meshtest.Eventually(t, 5*time.Second, func() error { return nomadOnly(ctx, c, 40, "b0", "b1") })
	meshtest.Eventually(t, 5*time.Second, func() error { return nomad.WaitStreams(ctx, 1) })
	lists := nomad.Requests("/v1/services")

	t.Run("changes while the stream is cut", func(t *testing.T) {
		nomad.DropStreams()
		nomad.StopAlloc(a0)
		nomad.StartAlloc("", "greeter", map[string]int{"grpc": b[2].Port})
		start := time.Now()
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 40, "b1", "b2") })
		t.Logf("traffic followed the changes %s after the stream was cut", time.Since(start).Round(time.Millisecond))
		nomadWaitPorts(t, srv, "greeter", b[1].Port, b[2].Port)
		if n := nomad.Requests("/v1/services"); n <= lists {
			t.Errorf("no resync after the stream was cut (%d listings)", n)
		}
	})

	t.Run("a restart at a lower index", func(t *testing.T) {
		nomad.Restart(7)
		meshtest.Eventually(t, 10*time.Second, func() error { return nomad.WaitStreams(ctx, 1) })
		nomad.StartAlloc("", "greeter", map[string]int{"grpc": b[3].Port})
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 40, "b1", "b2", "b3") })
		nomadWaitPorts(t, srv, "greeter", b[1].Port, b[2].Port, b[3].Port)
		if nomad.Index() > 100 {
			t.Fatalf("index %d: the restart did not lower it", nomad.Index())
		}
	})

	t.Run("the stream keeps working after the resyncs", func(t *testing.T) {
		nomad.StartAlloc("", "greeter", map[string]int{"grpc": b[4].Port})
		nomadWaitPorts(t, srv, "greeter", b[1].Port, b[2].Port, b[3].Port, b[4].Port)
		meshtest.Eventually(t, 10*time.Second, func() error { return nomadOnly(ctx, c, 60, "b1", "b2", "b3", "b4") })
	})
}

// Nomad unreachable: the catalog keeps the last known endpoints (traffic
// flows), the source shows degraded; once Nomad answers, a resync brings
// what changed meanwhile.
func TestNomadUnreachableFailsStatic(t *testing.T) {
	ctx := t.Context()
	b1, b2 := meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2")
	nomad := nomadtest.Start(t, nomadtest.Options{})
	nomad.SubmitJob(nomadGreeter("v1", nil))
	a1 := nomad.StartAlloc("", "greeter", map[string]int{"grpc": b1.Port})
	nomad.StartAlloc("", "greeter", map[string]int{"grpc": b2.Port})
	srv := startNomadMesh(t, nomad)
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })

	nomad.Down()
	start := time.Now()
	meshtest.Eventually(t, 10*time.Second, func() error {
		st, err := nomadSourceStatus(t, srv)
		if err != nil {
			return err
		}
		if st.Healthy || !strings.HasPrefix(st.LastError, "nomad: ") {
			return fmt.Errorf("source %+v, want degraded with a nomad error", st)
		}
		return nil
	})
	t.Logf("the nomad source was reported degraded %s after Nomad went down", time.Since(start).Round(time.Millisecond))
	if err := nomadOnly(ctx, c, 60, "b1", "b2"); err != nil {
		t.Fatalf("while Nomad is down, the last known endpoints must keep serving: %v", err)
	}
	nomadWaitPorts(t, srv, "greeter", b1.Port, b2.Port)
	_, metrics := srv.Get(t, "/metrics")
	if !strings.Contains(string(metrics), `bowline_discovery_source_healthy{source="nomad"} 0`) {
		t.Errorf("/metrics does not show the nomad source unhealthy")
	}

	nomad.StopAlloc(a1) // while Nomad is unreachable
	nomad.Up()
	meshtest.Eventually(t, 15*time.Second, func() error {
		st, err := nomadSourceStatus(t, srv)
		if err != nil {
			return err
		}
		if !st.Healthy {
			return fmt.Errorf("source %+v, want healthy again", st)
		}
		return nomadOnly(ctx, c, 30, "b2")
	})
	nomadWaitPorts(t, srv, "greeter", b2.Port)
}

func nomadSourceStatus(t *testing.T, srv *meshtest.Server) (discovery.SourceStatus, error) {
	var resp struct {
		Sources []discovery.SourceStatus `json:"discovery"`
	}
	srv.GetJSON(t, "/v1/sources", &resp)
	for _, s := range resp.Sources {
		if s.Name == "nomad" {
			return s, nil
		}
	}
	return discovery.SourceStatus{}, fmt.Errorf("no nomad source in %+v", resp.Sources)
}

// The sidecar task of a Nomad job: `bowline envoy` in the task's
// environment writes a bootstrap with which a (simulated) Envoy gets its
// inbound listener and the outbound listener of its upstream, whose endpoint
// is the upstream's sidecar; then it execs envoy, or says what is missing.
func TestNomadSidecarTask(t *testing.T) {
	nomad := nomadtest.Start(t, nomadtest.Options{})
	nomad.SubmitJob(nomadtest.Job{ID: "api", Services: []nomadtest.Service{{Name: "api", PortLabel: "http",
		Meta: map[string]string{"protocol": "http", "version": "v1", "bowline-sidecar-port": "sidecar"}}}})
	nomad.SubmitJob(nomadtest.Job{ID: "web", Services: []nomadtest.Service{{Name: "web", PortLabel: "http",
		Meta: map[string]string{"protocol": "http", "bowline-sidecar-port": "sidecar", "bowline-upstreams": "api:9191"}}}})
	nomad.StartAlloc("", "api", map[string]int{"http": 30100, "sidecar": 30101})
	webAlloc := nomad.StartAlloc("", "web", map[string]int{"http": 30200, "sidecar": 30201, "envoy_admin": 30202})
	srv := startNomadMesh(t, nomad)
	nomadWaitPorts(t, srv, "api", 30100)

	taskDir := t.TempDir()
	env := append(os.Environ(),
		"NOMAD_JOB_NAME=web", "NOMAD_GROUP_NAME=web", "NOMAD_TASK_NAME=sidecar", "NOMAD_NAMESPACE=default",
		"NOMAD_ALLOC_ID="+webAlloc, "NOMAD_TASK_DIR="+taskDir,
		"NOMAD_PORT_http=30200", "NOMAD_PORT_sidecar=30201", "NOMAD_PORT_envoy_admin=30202",
		"BOWLINE_XDS_ADDR="+srv.XDSAddr)
	runEnvoy := func(path string, args ...string) (string, string, int) {
		cmd := exec.Command(meshtest.Binary(t), append([]string{"envoy"}, args...)...)
		cmd.Env = append(slices.Clone(env), "PATH="+path)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
	}

	t.Run("the bootstrap gets the mesh config", func(t *testing.T) {
		out, errOut, code := runEnvoy(os.Getenv("PATH"), "--dry-run")
		if code != 0 {
			t.Fatalf("bowline envoy --dry-run: exit %d: %s", code, errOut)
		}
		var b bootstrapv3.Bootstrap
		if err := protojson.Unmarshal([]byte(out), &b); err != nil {
			t.Fatalf("bootstrap: %v\n%s", err, out)
		}
		if want := "web.default~" + webAlloc; b.GetNode().GetId() != want {
			t.Fatalf("node id %q, want %q", b.GetNode().GetId(), want)
		}
		conn, err := grpc.NewClient(srv.XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		envoy := adsclient.New(adsclient.Options{Node: b.GetNode()})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go func() { _ = envoy.Run(ctx, conn) }()
		meshtest.Eventually(t, 10*time.Second, func() error {
			listeners := envoy.Names(resourcev3.ListenerType)
			if !slices.Contains(listeners, "inbound") || !slices.Contains(listeners, "outbound|9191|default/api") {
				return fmt.Errorf("listeners %v", listeners)
			}
			res, ok := envoy.Resource(resourcev3.EndpointType, "default/api")
			if !ok {
				return fmt.Errorf("no endpoints for default/api: %v", envoy.Names(resourcev3.EndpointType))
			}
			var cla endpointv3.ClusterLoadAssignment
			if err := res.UnmarshalTo(&cla); err != nil {
				return err
			}
			var ports []uint32
			for _, l := range cla.GetEndpoints() {
				for _, e := range l.GetLbEndpoints() {
					ports = append(ports, e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue())
				}
			}
			if !slices.Equal(ports, []uint32{30101}) {
				return fmt.Errorf("api endpoints on ports %v, want its sidecar port 30101", ports)
			}
			return nil
		})
		p, err := proxyStatus(t, srv, b.GetNode().GetId())
		if err != nil {
			t.Fatal(err)
		}
		if p.Kind != "envoy" || p.Service != "web" {
			t.Fatalf("proxy %+v", p)
		}
	})

	t.Run("it execs envoy with the bootstrap", func(t *testing.T) {
		bin := t.TempDir()
		record := filepath.Join(t.TempDir(), "envoy-args")
		script := "#!/bin/sh\necho \"$@\" > " + record + "\n"
		if err := os.WriteFile(filepath.Join(bin, "envoy"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if _, errOut, code := runEnvoy(bin+string(os.PathListSeparator)+"/usr/bin:/bin", "--", "--use-dynamic-base-id"); code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		got, err := os.ReadFile(record)
		if err != nil {
			t.Fatalf("envoy did not run: %v", err)
		}
		want := "-c " + filepath.Join(taskDir, "bowline-envoy.json") + " --use-dynamic-base-id\n"
		if string(got) != want {
			t.Fatalf("envoy ran with %q, want %q", got, want)
		}
	})

	t.Run("without envoy it says so", func(t *testing.T) {
		_, errOut, code := runEnvoy(t.TempDir())
		if code == 0 || !strings.Contains(errOut, `envoy not found: no "envoy" executable in PATH`) || !strings.Contains(errOut, "--envoy-bin") {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
}
