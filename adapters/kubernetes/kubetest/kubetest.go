// Package kubetest drives a fake Kubernetes API for tests of the Kubernetes
// discovery source: client-go's fake clientset, which real informers list and
// watch, plus the objects a Service, its Deployment's Pods and their
// EndpointSlices would have, and a way to make every informer relist.
package kubetest

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The resources the discovery source follows.
var (
	Services       = schema.GroupVersionResource{Version: "v1", Resource: "services"}
	Pods           = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	Nodes          = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}
	EndpointSlices = schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"}
)

// Cluster is a fake API server.
type Cluster struct {
	*fake.Clientset
	t testing.TB

	mu      sync.Mutex
	lists   map[string]int
	watches []*watcher
	epoch   int // bumped by Relist
}

// New returns an empty fake cluster.
func New(t testing.TB) *Cluster {
	c := &Cluster{Clientset: fake.NewClientset(), t: t, lists: map[string]int{}}
	c.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		c.mu.Lock()
		c.lists[a.GetResource().Resource]++
		c.mu.Unlock()
		return false, nil, nil // the tracker answers
	})
	c.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if wa, ok := a.(k8stesting.WatchActionImpl); ok {
			opts = wa.ListOptions
		}
		inner, err := c.Tracker().Watch(a.GetResource(), a.GetNamespace(), opts)
		if err != nil {
			return true, nil, err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		w := newWatcher(a.GetResource().Resource, c.epoch, inner)
		c.watches = append(c.watches, w)
		return true, w, nil
	})
	return c
}

func gvrOf(obj runtime.Object) (schema.GroupVersionResource, metav1.Object) {
	switch o := obj.(type) {
	case *corev1.Service:
		return Services, o
	case *corev1.Pod:
		return Pods, o
	case *corev1.Node:
		return Nodes, o
	case *discoveryv1.EndpointSlice:
		return EndpointSlices, o
	}
	panic(fmt.Sprintf("kubetest: unexpected object %T", obj))
}

// Apply creates or replaces objects.
func (c *Cluster) Apply(objs ...runtime.Object) {
	c.t.Helper()
	for _, obj := range objs {
		gvr, m := gvrOf(obj)
		_, err := c.Tracker().Get(gvr, m.GetNamespace(), m.GetName())
		switch {
		case apierrors.IsNotFound(err):
			err = c.Tracker().Create(gvr, obj.DeepCopyObject(), m.GetNamespace())
		case err == nil:
			err = c.Tracker().Update(gvr, obj.DeepCopyObject(), m.GetNamespace())
		}
		if err != nil {
			c.t.Fatalf("kubetest: apply %s %s/%s: %v", gvr.Resource, m.GetNamespace(), m.GetName(), err)
		}
	}
}

// Delete deletes objects.
func (c *Cluster) Delete(objs ...runtime.Object) {
	c.t.Helper()
	for _, obj := range objs {
		gvr, m := gvrOf(obj)
		if err := c.Tracker().Delete(gvr, m.GetNamespace(), m.GetName()); err != nil {
			c.t.Fatalf("kubetest: delete %s %s/%s: %v", gvr.Resource, m.GetNamespace(), m.GetName(), err)
		}
	}
}

// Lists counts the list calls made for a resource ("pods").
func (c *Cluster) Lists(resource string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lists[resource]
}

// WaitWatching waits until the informers watch services, endpointslices,
// pods and nodes (and, after Relist, watch again). The fake API delivers no
// deletion that happens before the watch opens, so tests wait for it before
// they change anything.
func (c *Cluster) WaitWatching() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		missing := c.notWatched()
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("kubetest: no watch on %v after 30s", missing)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *Cluster) notWatched() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var missing []string
	for _, r := range []schema.GroupVersionResource{Services, EndpointSlices, Pods, Nodes} {
		found := false
		for _, w := range c.watches {
			found = found || (w.resource == r.Resource && w.epoch == c.epoch && !w.isClosed())
		}
		if !found {
			missing = append(missing, r.Resource)
		}
	}
	return missing
}

// Relist ends every open watch with "410 Gone: too old resource version",
// as an API server does after compaction, so that every informer lists its
// resource again. It returns the number of list calls made so far per
// resource, for WaitRelisted.
func (c *Cluster) Relist() map[string]int {
	c.mu.Lock()
	before := map[string]int{}
	for k, v := range c.lists {
		before[k] = v
	}
	c.epoch++
	open := c.watches
	c.watches = nil
	c.mu.Unlock()
	for _, w := range open {
		w.expire()
	}
	return before
}

// WaitRelisted waits until every followed resource was listed again since
// Relist returned before, and is watched again.
func (c *Cluster) WaitRelisted(before map[string]int) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var missing []string
		for _, r := range []schema.GroupVersionResource{Services, EndpointSlices, Pods, Nodes} {
			if c.Lists(r.Resource) <= before[r.Resource] {
				missing = append(missing, r.Resource)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("kubetest: %v not listed again after 30s", missing)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.WaitWatching()
}

// watcher forwards a tracker watch and can end it the way an API server
// ends a watch whose resource version was compacted.
type watcher struct {
	resource string
	epoch    int
	inner    watch.Interface
	out      chan watch.Event
	expired  chan struct{}
	done     chan struct{}
	once     sync.Once
	exOnce   sync.Once
}

func newWatcher(resource string, epoch int, inner watch.Interface) *watcher {
	w := &watcher{resource: resource, epoch: epoch, inner: inner, out: make(chan watch.Event),
		expired: make(chan struct{}), done: make(chan struct{})}
	go w.forward()
	return w
}

func (w *watcher) forward() {
	defer close(w.out)
	defer w.inner.Stop()
	in := w.inner.ResultChan()
	for {
		select {
		case <-w.done:
			return
		case <-w.expired:
			gone := &metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired,
				Message: "too old resource version (kubetest)"}
			select {
			case w.out <- watch.Event{Type: watch.Error, Object: gone}:
			case <-w.done:
			}
			return
		case ev, ok := <-in:
			if !ok {
				return
			}
			select {
			case w.out <- ev:
			case <-w.done:
				return
			}
		}
	}
}

func (w *watcher) expire()                        { w.exOnce.Do(func() { close(w.expired) }) }
func (w *watcher) Stop()                          { w.once.Do(func() { close(w.done) }) }
func (w *watcher) ResultChan() <-chan watch.Event { return w.out }
func (w *watcher) isClosed() bool {
	select {
	case <-w.done:
		return true
	case <-w.expired:
		return true
	default:
		return false
	}
}

// Objects.

// Service is a ClusterIP Service with the given ports.
func Service(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: ports, Selector: map[string]string{"app": name}},
	}
}

// Port is a TCP Service port named name (which may carry the protocol:
// "grpc", "http-web").
func Port(name string, port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, Protocol: corev1.ProtocolTCP}
}

// PodSpec describes one pod of a workload.
type PodSpec struct {
	Namespace, Name string
	IP              string
	App             string // the app label (the Service's selector)
	Labels          map[string]string
	ServiceAccount  string
	Node            string
	SidecarPort     int // the bowline.io/sidecar-port annotation, when not 0
}

// Pod returns the Pod.
func (p PodSpec) Pod() *corev1.Pod {
	labels := map[string]string{"app": p.App, "pod-template-hash": "5d9c7f8b4"}
	for k, v := range p.Labels {
		labels[k] = v
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: labels},
		Spec:       corev1.PodSpec{ServiceAccountName: p.ServiceAccount, NodeName: p.Node, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IP, PodIPs: []corev1.PodIP{{IP: p.IP}}},
	}
	if p.SidecarPort != 0 {
		pod.Annotations = map[string]string{"bowline.io/sidecar-port": strconv.Itoa(p.SidecarPort)}
	}
	return pod
}

// Condition is the state of an endpoint in its EndpointSlice.
type Condition int

// Endpoint conditions as the EndpointSlice controller sets them.
const (
	Ready             Condition = iota // ready, serving
	NotReady                           // not ready, not serving
	TerminatingServed                  // terminating, still serving
	Terminating                        // terminating, no longer serving
)

// Endpoint is the EndpointSlice entry of a pod.
func (p PodSpec) Endpoint(c Condition) discoveryv1.Endpoint {
	ready, serving, terminating := c == Ready, c == Ready || c == TerminatingServed, c == TerminatingServed || c == Terminating
	e := discoveryv1.Endpoint{
		Addresses:  []string{p.IP},
		Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name},
	}
	if p.Node != "" {
		e.NodeName = &p.Node
	}
	return e
}

// EndpointSlice is an IPv4 EndpointSlice of a Service with one port.
func EndpointSlice(ns, name, service, portName string, port int32, endpoints ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	proto := corev1.ProtocolTCP
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			discoveryv1.LabelServiceName: service,
			discoveryv1.LabelManagedBy:   "endpointslice-controller.k8s.io",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   endpoints,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &proto}},
	}
}

// Node is a Node in a region and zone.
func Node(name, region, zone string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		corev1.LabelTopologyRegion: region,
		corev1.LabelTopologyZone:   zone,
		corev1.LabelHostname:       name,
	}}}
}
