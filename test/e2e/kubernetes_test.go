package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/adapters/kubernetes"
	"github.com/bowlinemesh/bowline/adapters/kubernetes/kubetest"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/test/meshtest"
	"github.com/bowlinemesh/bowline/xds/controlplane"
)

// recordingSource passes a source's states on and keeps a copy of each.
type recordingSource struct {
	discovery.Source
	mu     sync.Mutex
	states []discovery.State
}

func (r *recordingSource) Run(ctx context.Context, updates chan<- discovery.State) error {
	ch := make(chan discovery.State)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for st := range ch {
			r.mu.Lock()
			r.states = append(r.states, st)
			r.mu.Unlock()
			select {
			case updates <- st:
			case <-ctx.Done():
				return
			}
		}
	}()
	err := r.Source.Run(ctx, ch)
	close(ch)
	<-done
	return err
}

// sent returns the states sent so far.
func (r *recordingSource) sent() []discovery.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.states)
}

// kubeMesh is a control plane in the test process whose Kubernetes source
// reads a fake cluster (client-go's fake clientset, real informers), beside
// the file registry of dir.
type kubeMesh struct {
	srv     *meshtest.Server
	cluster *kubetest.Cluster
	kube    *recordingSource
}

func startKubeMesh(t *testing.T, dir string, cluster *kubetest.Cluster) *kubeMesh {
	t.Helper()
	m := &kubeMesh{cluster: cluster}
	m.srv, _ = meshtest.StartInProcess(t, controlplane.Options{
		ConfigDir: dir,
		Sources: func(cfg *config.Config, store *config.Store, log *slog.Logger) ([]discovery.Source, []config.FileSource, error) {
			m.kube = &recordingSource{Source: kubernetes.New(cluster, kubernetes.Config{TrustDomain: cfg.Mesh.TrustDomain}, log.With("component", "kubernetes"))}
			return []discovery.Source{file.New(store), m.kube}, nil, nil
		},
	})
	cluster.WaitWatching()
	return m
}

// apiService is a service as GET /v1/services/{namespace}/{name} shows it.
type apiService struct {
	Protocol  string            `json:"protocol"`
	Labels    map[string]string `json:"labels"`
	Sources   []string          `json:"sources"`
	Endpoints []struct {
		Port     uint32            `json:"port"`
		Labels   map[string]string `json:"labels"`
		Health   string            `json:"health"`
		Identity string            `json:"identity"`
		Zone     string            `json:"zone"`
		Source   string            `json:"source"`
	} `json:"endpoints"`
}

func (m *kubeMesh) service(t *testing.T, name string) apiService {
	t.Helper()
	var svc apiService
	m.srv.GetJSON(t, "/v1/services/default/"+name, &svc)
	return svc
}

// pushes sums bowline_xds_pushes_total over every type, from /metrics.
func (m *kubeMesh) pushes(t *testing.T) int {
	t.Helper()
	_, body := m.srv.Get(t, "/metrics")
	total := 0
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "bowline_xds_pushes_total{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		total += int(v)
	}
	return total
}

// greeterPod is a pod of the greeter Deployment served by a backend: on
// loopback every pod has the address 127.0.0.1 and the backend's port, so
// each pod gets an EndpointSlice of its own (the EndpointSlice controller
// groups endpoints by their ports).
type greeterPod struct {
	spec kubetest.PodSpec
	port int32
}

func newGreeterPod(b *meshtest.Backend, version string) greeterPod {
	return greeterPod{
		spec: kubetest.PodSpec{Namespace: "default", Name: "greeter-" + b.ID, IP: "127.0.0.1", App: "greeter",
			ServiceAccount: "greeter", Node: "node-a", Labels: map[string]string{"version": version}},
		port: int32(b.Port),
	}
}

func (p greeterPod) slice(c kubetest.Condition) *discoveryv1.EndpointSlice {
	return kubetest.EndpointSlice("default", p.spec.Name+"-slice", "greeter", "grpc", p.port, p.spec.Endpoint(c))
}

// set applies the pods and their slices with the given condition.
func set(c *kubetest.Cluster, cond kubetest.Condition, pods ...greeterPod) {
	for _, p := range pods {
		c.Apply(p.spec.Pod(), p.slice(cond))
	}
}

// remove deletes the pods and their slices.
func remove(c *kubetest.Cluster, pods ...greeterPod) {
	for _, p := range pods {
		c.Delete(p.slice(kubetest.Ready), p.spec.Pod())
	}
}

// onlyOn checks that 30 calls in a row land on the given backends only and
// that each of them answers at least once in 300 calls.
func onlyOn(ctx context.Context, c *meshtest.Client, ids ...string) error {
	for range 30 {
		id, err := c.Call(ctx)
		if err != nil {
			return err
		}
		if !slices.Contains(ids, id) {
			return fmt.Errorf("%s still receives traffic (want only %v)", id, ids)
		}
	}
	spread := c.Spread(ctx, 300)
	for _, id := range ids {
		if spread[id] == 0 {
			return fmt.Errorf("%s receives no traffic: %v", id, spread)
		}
	}
	if len(spread) != len(ids) {
		return fmt.Errorf("traffic outside %v: %v", ids, spread)
	}
	return nil
}

func TestKubernetesTrafficFollowsEndpointSlices(t *testing.T) {
	ctx := t.Context()
	b1, b2, b3 := meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2"), meshtest.StartBackend(t, "b3")
	p1, p2, p3 := newGreeterPod(b1, "v1"), newGreeterPod(b2, "v1"), newGreeterPod(b3, "v2")
	cluster := kubetest.New(t)
	cluster.Apply(kubetest.Node("node-a", "eu-west", "eu-west-1a"), kubetest.Service("default", "greeter", kubetest.Port("grpc", 50051)))
	set(cluster, kubetest.Ready, p1)
	m := startKubeMesh(t, t.TempDir(), cluster)

	c := meshtest.Dial(t, m.srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { return onlyOn(ctx, c, "b1") })

	t.Run("the catalog shows the pod's details", func(t *testing.T) {
		svc := m.service(t, "greeter")
		if svc.Protocol != "grpc" || len(svc.Endpoints) != 1 {
			t.Fatalf("service %+v", svc)
		}
		e := svc.Endpoints[0]
		if e.Identity != "spiffe://"+config.DefaultTrustDomain+"/ns/default/sa/greeter" || e.Zone != "eu-west-1a" || e.Labels["version"] != "v1" || e.Source != "kubernetes" {
			t.Fatalf("endpoint %+v", e)
		}
	})

	t.Run("scale up: new pods get traffic once ready", func(t *testing.T) {
		set(cluster, kubetest.NotReady, p2, p3)
		// Not ready yet: the old pod keeps all the traffic.
		meshtest.Eventually(t, 10*time.Second, func() error {
			if svc := m.service(t, "greeter"); len(svc.Endpoints) != 3 {
				return fmt.Errorf("%d endpoints in the catalog", len(svc.Endpoints))
			}
			return nil
		})
		if err := onlyOn(ctx, c, "b1"); err != nil {
			t.Fatalf("pods that are not ready got traffic: %v", err)
		}
		set(cluster, kubetest.Ready, p2, p3)
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b1", "b2", "b3") })
	})

	t.Run("scale down: a terminating pod drains, then goes", func(t *testing.T) {
		set(cluster, kubetest.TerminatingServed, p3)
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b1", "b2") })
		remove(cluster, p3)
		meshtest.Eventually(t, 10*time.Second, func() error {
			if svc := m.service(t, "greeter"); len(svc.Endpoints) != 2 {
				return fmt.Errorf("%d endpoints in the catalog", len(svc.Endpoints))
			}
			return nil
		})
		if err := onlyOn(ctx, c, "b1", "b2"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("when every pod terminates, the draining ones still serve", func(t *testing.T) {
		set(cluster, kubetest.TerminatingServed, p1)
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b2") })
		set(cluster, kubetest.TerminatingServed, p2)
		// No ready pod is left: the terminating, still serving ones take the
		// traffic rather than failing it.
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b1", "b2") })
		set(cluster, kubetest.Terminating, p1)
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b2") })
	})

	t.Run("a rollout replaces the pods", func(t *testing.T) {
		p4 := newGreeterPod(b3, "v3")
		p4.spec.Name = "greeter-b3-new"
		set(cluster, kubetest.Ready, p4)
		remove(cluster, p1, p2)
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b3") })
		if svc := m.service(t, "greeter"); len(svc.Endpoints) != 1 || svc.Endpoints[0].Labels["version"] != "v3" {
			t.Fatalf("endpoints %+v", svc.Endpoints)
		}
	})

	p, err := proxyStatus(t, m.srv, c.NodeID)
	if err != nil || p.LastNACK != nil {
		t.Fatalf("proxy %+v (%v): want no NACK", p, err)
	}
}

func TestKubernetesAndFileRegistryServeOneService(t *testing.T) {
	ctx := t.Context()
	vm, pod := meshtest.StartBackend(t, "vm"), meshtest.StartBackend(t, "pod")
	dir := t.TempDir()
	// greeter runs on a VM, declared in the file registry, and is moving to
	// Kubernetes, where one pod runs already.
	meshtest.WriteFile(t, dir, "greeter.hcl", greeterHCL(vm))
	cluster := kubetest.New(t)
	svc := kubetest.Service("default", "greeter", kubetest.Port("grpc", 50051))
	cluster.Apply(svc)
	p := newGreeterPod(pod, "v2")
	set(cluster, kubetest.Ready, p)
	m := startKubeMesh(t, dir, cluster)

	c := meshtest.Dial(t, m.srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { return onlyOn(ctx, c, "vm", "pod") })
	if got := m.service(t, "greeter"); !slices.Equal(got.Sources, []string{"file", "kubernetes"}) || len(got.Endpoints) != 2 {
		t.Fatalf("merged service %+v", got)
	}

	t.Run("an address both sources report is one endpoint", func(t *testing.T) {
		// A pod that Kubernetes reports at the VM's address:port (the same
		// instance, say, registered in both places).
		dup := newGreeterPod(vm, "v1")
		set(cluster, kubetest.Ready, dup)
		meshtest.Eventually(t, 10*time.Second, func() error {
			states := m.kube.sent()
			if len(states) == 0 {
				return fmt.Errorf("no state yet")
			}
			for _, s := range states[len(states)-1].Services {
				if s.Name == "greeter" && len(s.Endpoints) == 2 {
					return nil
				}
			}
			return fmt.Errorf("the kubernetes source does not report both pods yet")
		})
		got := m.service(t, "greeter")
		if len(got.Endpoints) != 2 {
			t.Fatalf("want 2 endpoints (the duplicate kept once, from the file registry): %+v", got.Endpoints)
		}
		for _, e := range got.Endpoints {
			if e.Port == uint32(vm.Port) && e.Source != "file" {
				t.Fatalf("the duplicate must be kept from the first source by name (file): %+v", e)
			}
		}
		if err := onlyOn(ctx, c, "vm", "pod"); err != nil {
			t.Fatal(err)
		}
		pr, err := proxyStatus(t, m.srv, c.NodeID)
		if err != nil || pr.LastNACK != nil {
			t.Fatalf("proxy %+v (%v): a duplicate endpoint must not reach the client", pr, err)
		}
		remove(cluster, dup)
	})

	t.Run("bowline.io/merge: false gives the service to Kubernetes alone", func(t *testing.T) {
		svc.Annotations = map[string]string{kubernetes.AnnotationMerge: "false"}
		cluster.Apply(svc)
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "pod") })
		if got := m.service(t, "greeter"); !slices.Equal(got.Sources, []string{"kubernetes"}) || got.Labels[discovery.LabelMerge] != "false" {
			t.Fatalf("service %+v", got)
		}
		delete(svc.Annotations, kubernetes.AnnotationMerge)
		cluster.Apply(svc)
		meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "vm", "pod") })
	})
}

func TestKubernetesRelistCausesNoPush(t *testing.T) {
	ctx := t.Context()
	b1, b2 := meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2")
	cluster := kubetest.New(t)
	cluster.Apply(kubetest.Node("node-a", "eu-west", "eu-west-1a"), kubetest.Service("default", "greeter", kubetest.Port("grpc", 50051)))
	set(cluster, kubetest.Ready, newGreeterPod(b1, "v1"), newGreeterPod(b2, "v1"))
	m := startKubeMesh(t, t.TempDir(), cluster)
	c := meshtest.Dial(t, m.srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { return onlyOn(ctx, c, "b1", "b2") })
	meshtest.Eventually(t, 10*time.Second, func() error {
		p, err := proxyStatus(t, m.srv, c.NodeID)
		if err != nil {
			return err
		}
		for _, typ := range []string{"listeners", "routes", "clusters", "endpoints"} {
			if p.Acked[typ] == "" || p.Acked[typ] != p.Sent[typ] {
				return fmt.Errorf("%s: sent %q, acked %q", typ, p.Sent[typ], p.Acked[typ])
			}
		}
		return nil
	})
	pushes, sent := m.pushes(t), len(m.kube.sent())

	// Every informer relists (its watch ends with 410 Gone) and finds the
	// cluster as it was.
	before := cluster.Relist()
	cluster.WaitRelisted(before)
	time.Sleep(300 * time.Millisecond) // the time a wrong push would take to show

	// Then a change the client does not use: the next state the source
	// sends must be that one, and the client gets no push for it either.
	cluster.Apply(kubetest.Service("default", "unrelated", kubetest.Port("http", 80)))
	meshtest.Eventually(t, 10*time.Second, func() error {
		code, _ := m.srv.Get(t, "/v1/services/default/unrelated")
		if code != 200 {
			return fmt.Errorf("unrelated service not in the catalog yet (%d)", code)
		}
		return nil
	})
	states := m.kube.sent()[sent:]
	if len(states) != 1 {
		t.Fatalf("the relist made the source send %d states, want only the one with the new service", len(states)-1)
	}
	if got := m.pushes(t); got != pushes {
		t.Fatalf("bowline_xds_pushes_total went from %d to %d although nothing the client uses changed", pushes, got)
	}
	if cluster.Lists("pods") < 2 || cluster.Lists("endpointslices") < 2 {
		t.Fatalf("no relist happened: pods listed %d times, endpointslices %d", cluster.Lists("pods"), cluster.Lists("endpointslices"))
	}

	// The counter does count: a change the client uses is pushed.
	remove(cluster, newGreeterPod(b2, "v1"))
	meshtest.Eventually(t, 10*time.Second, func() error {
		if got := m.pushes(t); got == pushes {
			return fmt.Errorf("no push after a pod went away")
		}
		return nil
	})
	meshtest.Eventually(t, 10*time.Second, func() error { return onlyOn(ctx, c, "b1") })
}
