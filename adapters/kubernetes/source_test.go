package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bowlinemesh/bowline/adapters/kubernetes/kubetest"
	"github.com/bowlinemesh/bowline/discovery"
)

// harness runs a source against a fake cluster and collects what it sends.
type harness struct {
	t       *testing.T
	cluster *kubetest.Cluster
	src     *Source
	states  chan discovery.State
	done    chan error
	cancel  context.CancelFunc

	mu     sync.Mutex
	events map[string]int // unchanged events per informer
}

func startSource(t *testing.T, cluster *kubetest.Cluster, cfg Config) *harness {
	t.Helper()
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = td
	}
	h := &harness{t: t, cluster: cluster, states: make(chan discovery.State, 100), done: make(chan error, 1), events: map[string]int{}}
	h.src = New(cluster, cfg, slog.New(slog.DiscardHandler))
	h.src.onEvent = func(informer string, changed bool) {
		if !changed {
			h.mu.Lock()
			h.events[informer]++
			h.mu.Unlock()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.src.Run(ctx, h.states) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("Run returned %v after cancellation, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of cancellation")
		}
	})
	return h
}

func (h *harness) unchangedEvents() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, v := range h.events {
		n += v
	}
	return n
}

// next returns the next state, failing after 30s.
func (h *harness) next() discovery.State {
	h.t.Helper()
	select {
	case st := <-h.states:
		return st
	case <-time.After(30 * time.Second):
		h.t.Fatal("no state within 30s")
	}
	return discovery.State{}
}

// until reads states until one satisfies cond (an error says why not).
func (h *harness) until(what string, cond func(discovery.State) error) discovery.State {
	h.t.Helper()
	deadline := time.After(30 * time.Second)
	var last error
	for {
		select {
		case st := <-h.states:
			if last = cond(st); last == nil {
				return st
			}
		case <-deadline:
			h.t.Fatalf("%s: not within 30s; last state: %v", what, last)
		}
	}
}

// endpointsOf renders the endpoints of one service as "address:port health",
// or an error when the state lacks the service.
func endpointsOf(st discovery.State, ns, name string) ([]string, error) {
	if st.Err != nil {
		return nil, st.Err
	}
	for _, s := range st.Services {
		if s.Namespace == ns && s.Name == name {
			return addrs(s), nil
		}
	}
	return nil, fmt.Errorf("no service %s/%s", ns, name)
}

func wantEndpoints(ns, name string, want ...string) func(discovery.State) error {
	return func(st discovery.State) error {
		got, err := endpointsOf(st, ns, name)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("endpoints %v, want %v", got, want)
		}
		return nil
	}
}

var web3 = kubetest.PodSpec{Namespace: "shop", Name: "web-3", IP: "10.0.1.3", App: "web", Node: "node-a"}

func TestSourceFollowsTheCluster(t *testing.T) {
	c := kubetest.New(t)
	c.Apply(nodeA, nodeB, kubetest.Service("shop", "web", kubetest.Port("grpc", 80)), web1.Pod(), web2.Pod(),
		kubetest.EndpointSlice("shop", "web-abc", "web", "grpc", 8080, web1.Endpoint(kubetest.Ready), web2.Endpoint(kubetest.Ready)))
	h := startSource(t, c, Config{})

	first := h.next()
	if err := wantEndpoints("shop", "web", "10.0.1.1:8080 healthy", "10.0.1.2:8080 healthy")(first); err != nil {
		t.Fatalf("first state: %v", err)
	}
	if ep := first.Services[0].Endpoints[0]; ep.Identity != "spiffe://mesh.test/ns/shop/sa/web-sa" || ep.Zone != "eu-west-1a" || ep.Labels["version"] != "v1" {
		t.Fatalf("first endpoint %+v", ep)
	}
	if first.Services[0].Protocol != discovery.ProtocolGRPC {
		t.Fatalf("protocol %s", first.Services[0].Protocol)
	}
	c.WaitWatching()

	// Scale up: a new pod, first not ready, then ready.
	c.Apply(web3.Pod(), kubetest.EndpointSlice("shop", "web-abc", "web", "grpc", 8080,
		web1.Endpoint(kubetest.Ready), web2.Endpoint(kubetest.Ready), web3.Endpoint(kubetest.NotReady)))
	h.until("new pod not ready", wantEndpoints("shop", "web", "10.0.1.1:8080 healthy", "10.0.1.2:8080 healthy", "10.0.1.3:8080 unhealthy"))
	c.Apply(kubetest.EndpointSlice("shop", "web-abc", "web", "grpc", 8080,
		web1.Endpoint(kubetest.Ready), web2.Endpoint(kubetest.Ready), web3.Endpoint(kubetest.Ready)))
	h.until("new pod ready", wantEndpoints("shop", "web", "10.0.1.1:8080 healthy", "10.0.1.2:8080 healthy", "10.0.1.3:8080 healthy"))

	// A pod's labels change: its endpoint follows.
	relabelled := web3
	relabelled.Labels = map[string]string{"version": "v3"}
	c.Apply(relabelled.Pod())
	h.until("labels follow the pod", func(st discovery.State) error {
		for _, e := range st.Services[0].Endpoints {
			if e.Address == "10.0.1.3" && e.Labels["version"] == "v3" {
				return nil
			}
		}
		return errors.New("10.0.1.3 has no version v3")
	})

	// Scale down: the pod terminates (drains while serving), then goes.
	c.Apply(kubetest.EndpointSlice("shop", "web-abc", "web", "grpc", 8080,
		web1.Endpoint(kubetest.Ready), web2.Endpoint(kubetest.Ready), web3.Endpoint(kubetest.TerminatingServed)))
	h.until("terminating pod drains", wantEndpoints("shop", "web", "10.0.1.1:8080 healthy", "10.0.1.2:8080 healthy", "10.0.1.3:8080 degraded"))
	c.Apply(kubetest.EndpointSlice("shop", "web-abc", "web", "grpc", 8080, web1.Endpoint(kubetest.Ready), web2.Endpoint(kubetest.Ready)))
	c.Delete(web3.Pod())
	h.until("pod gone", wantEndpoints("shop", "web", "10.0.1.1:8080 healthy", "10.0.1.2:8080 healthy"))

	// The Service goes.
	c.Delete(kubetest.Service("shop", "web"))
	h.until("service gone", func(st discovery.State) error {
		if st.Err != nil || len(st.Services) != 0 {
			return fmt.Errorf("services %v, err %v", st.Services, st.Err)
		}
		return nil
	})
}

// markerThenNext makes a change and checks that the very next state is the
// one carrying it: nothing was sent in between.
func markerThenNext(t *testing.T, h *harness) {
	t.Helper()
	c := h.cluster
	c.Apply(kubetest.Service("shop", "marker", kubetest.Port("http", 80)))
	st := h.next()
	if _, err := endpointsOf(st, "shop", "marker"); err != nil {
		t.Fatalf("a state was sent although nothing changed (the next state lacks the marker service: %v):\n%s", err, dump(st.Services))
	}
}

func fillCluster(c *kubetest.Cluster) int {
	objs := []runtime.Object{nodeA, nodeB, kubetest.Service("shop", "web", kubetest.Port("grpc", 80)), web1.Pod(), web2.Pod(),
		kubetest.EndpointSlice("shop", "web-abc", "web", "grpc", 8080, web1.Endpoint(kubetest.Ready), web2.Endpoint(kubetest.Ready))}
	c.Apply(objs...)
	return len(objs)
}

func TestSourceResyncSendsNothing(t *testing.T) {
	c := kubetest.New(t)
	n := fillCluster(c)
	h := startSource(t, c, Config{Resync: time.Second})
	h.next()
	c.WaitWatching()
	// Wait for at least two resyncs of every object (1s is the minimum period).
	deadline := time.Now().Add(30 * time.Second)
	for h.unchangedEvents() < 2*n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d resync events after 30s", h.unchangedEvents())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(3 * DefaultDebounce) // give a wrongly woken source the time to send
	markerThenNext(t, h)
}

func TestSourceRelistSendsNothing(t *testing.T) {
	c := kubetest.New(t)
	n := fillCluster(c)
	h := startSource(t, c, Config{})
	h.next()
	c.WaitWatching()
	before := c.Relist()
	c.WaitRelisted(before)
	// The relist replays every object as an update.
	deadline := time.Now().Add(30 * time.Second)
	for h.unchangedEvents() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d objects replayed after the relist", h.unchangedEvents(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(3 * DefaultDebounce)
	markerThenNext(t, h)
}

// A change to an object that alters no service (a pod no slice lists)
// wakes the source, which compares and sends nothing.
func TestSourceChangeThatAltersNoServiceSendsNothing(t *testing.T) {
	c := kubetest.New(t)
	fillCluster(c)
	stray := kubetest.PodSpec{Namespace: "shop", Name: "batch-1", IP: "10.0.9.9", App: "batch"}
	c.Apply(stray.Pod())
	h := startSource(t, c, Config{})
	h.next()
	c.WaitWatching()
	stray.Labels = map[string]string{"version": "v9"}
	c.Apply(stray.Pod())
	time.Sleep(3 * DefaultDebounce)
	markerThenNext(t, h)
}

func TestSourceNamespaces(t *testing.T) {
	c := kubetest.New(t)
	c.Apply(kubetest.Service("shop", "web", kubetest.Port("http", 80)), kubetest.Service("billing", "ledger", kubetest.Port("http", 80)),
		kubetest.Service("kube-system", "dns", kubetest.Port("dns-tcp", 53)))
	h := startSource(t, c, Config{Namespaces: []string{"shop", "billing", "shop"}})
	st := h.next()
	var got []string
	for _, s := range st.Services {
		got = append(got, s.ServiceKey.String())
	}
	if !slices.Equal(got, []string{"billing/ledger", "shop/web"}) {
		t.Fatalf("services %v", got)
	}
}

func TestSourceReportsListFailuresAndRecovers(t *testing.T) {
	c := kubetest.New(t)
	fillCluster(c)
	var forbidden atomic.Bool
	forbidden.Store(true)
	c.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if forbidden.Load() {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("RBAC says no"))
		}
		return false, nil, nil
	})
	h := startSource(t, c, Config{})
	st := h.next()
	if st.Err == nil || !strings.HasPrefix(st.Err.Error(), "kubernetes: ") || !strings.Contains(st.Err.Error(), "pods") || !strings.Contains(st.Err.Error(), "RBAC says no") {
		t.Fatalf("first state: err %v, want the pods list failure", st.Err)
	}
	forbidden.Store(false)
	h.until("recovered", wantEndpoints("shop", "web", "10.0.1.1:8080 healthy", "10.0.1.2:8080 healthy"))
}
