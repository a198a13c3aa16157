package kubernetes

import (
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The informers' transform cuts every API object down to one of the small
// types below as it arrives, so the informer caches hold only what the mesh
// uses (CoreDNS's kubernetes plugin does the same) and nothing of client-go's
// types travels further than this file. Each type embeds an ObjectMeta with
// only the name and namespace set, which is all the informers need to key
// and index them. Cut objects are never modified.

// meta is what every cut object carries for the informer's cache.
type meta struct {
	metav1.TypeMeta
	metav1.ObjectMeta
}

func cutMeta(m *metav1.ObjectMeta) meta {
	return meta{ObjectMeta: metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace}}
}

// service is a Kubernetes Service.
type service struct {
	meta
	// Headless is true for clusterIP: None.
	Headless bool
	// ExternalName is true for type ExternalName (no endpoints of its own).
	ExternalName bool
	Ports        []servicePort
	// Annotations holds the bowline.io/ annotations only.
	Annotations map[string]string
}

type servicePort struct {
	Name        string
	Port        int32
	Protocol    string // TCP, UDP or SCTP
	AppProtocol string
}

// endpointSlice is a discovery.k8s.io/v1 EndpointSlice.
type endpointSlice struct {
	meta
	// Service is the kubernetes.io/service-name label.
	Service     string
	AddressType string
	Ports       []slicePort
	Endpoints   []sliceEndpoint
}

type slicePort struct {
	Name string
	// Port is 0 when the slice leaves it unset.
	Port     int32
	Protocol string
}

type sliceEndpoint struct {
	// Address is the first address (the only one kube-proxy looks at).
	Address string
	// The conditions, with the API's defaults for unset ones applied (ready
	// and serving default to true, terminating to false).
	Ready, Serving, Terminating bool
	NodeName                    string
	Zone                        string
	// PodNamespace and PodName name the target when it is a Pod.
	PodNamespace, PodName string
}

// pod is a Kubernetes Pod.
type pod struct {
	meta
	Labels         map[string]string
	ServiceAccount string
	NodeName       string
	// Annotations holds the bowline.io/ annotations only.
	Annotations map[string]string
}

// node is a Kubernetes Node: only where it is.
type node struct {
	meta
	Region, Zone string
}

// cut is the informers' transform. Objects already cut (and the informer's
// tombstones, which it never passes here) are returned as they are, so it is
// idempotent.
func cut(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Service:
		return cutService(o), nil
	case *discoveryv1.EndpointSlice:
		return cutEndpointSlice(o), nil
	case *corev1.Pod:
		return cutPod(o), nil
	case *corev1.Node:
		return cutNode(o), nil
	}
	return obj, nil
}

func cutService(s *corev1.Service) *service {
	out := &service{
		meta:         cutMeta(&s.ObjectMeta),
		Headless:     s.Spec.ClusterIP == corev1.ClusterIPNone,
		ExternalName: s.Spec.Type == corev1.ServiceTypeExternalName,
		Annotations:  bowlineAnnotations(s.Annotations),
	}
	for _, p := range s.Spec.Ports {
		out.Ports = append(out.Ports, servicePort{Name: p.Name, Port: p.Port, Protocol: string(p.Protocol), AppProtocol: deref(p.AppProtocol)})
	}
	return out
}

func cutEndpointSlice(s *discoveryv1.EndpointSlice) *endpointSlice {
	out := &endpointSlice{
		meta:        cutMeta(&s.ObjectMeta),
		Service:     s.Labels[discoveryv1.LabelServiceName],
		AddressType: string(s.AddressType),
	}
	for _, p := range s.Ports {
		sp := slicePort{Name: deref(p.Name)}
		if p.Port != nil {
			sp.Port = *p.Port
		}
		if p.Protocol != nil {
			sp.Protocol = string(*p.Protocol)
		}
		out.Ports = append(out.Ports, sp)
	}
	for _, e := range s.Endpoints {
		if len(e.Addresses) == 0 {
			continue
		}
		se := sliceEndpoint{
			Address:     e.Addresses[0],
			Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
			Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
			Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
			NodeName:    deref(e.NodeName),
			Zone:        deref(e.Zone),
		}
		if r := e.TargetRef; r != nil && r.Kind == "Pod" && (r.APIVersion == "" || r.APIVersion == "v1") {
			se.PodNamespace, se.PodName = r.Namespace, r.Name
			if se.PodNamespace == "" {
				se.PodNamespace = s.Namespace
			}
		}
		out.Endpoints = append(out.Endpoints, se)
	}
	return out
}

func cutPod(p *corev1.Pod) *pod {
	return &pod{
		meta:           cutMeta(&p.ObjectMeta),
		Labels:         maps.Clone(p.Labels),
		ServiceAccount: p.Spec.ServiceAccountName,
		NodeName:       p.Spec.NodeName,
		Annotations:    bowlineAnnotations(p.Annotations),
	}
}

func cutNode(n *corev1.Node) *node {
	return &node{
		meta:   cutMeta(&n.ObjectMeta),
		Region: n.Labels[corev1.LabelTopologyRegion],
		Zone:   n.Labels[corev1.LabelTopologyZone],
	}
}

// bowlineAnnotations keeps the annotations that steer Bowline.
func bowlineAnnotations(in map[string]string) map[string]string {
	var out map[string]string
	for k, v := range in {
		if strings.HasPrefix(k, annotationPrefix) {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// DeepCopyObject implementations, required of whatever an informer caches.

func (m meta) copyMeta() meta {
	return meta{TypeMeta: m.TypeMeta, ObjectMeta: metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace}}
}

func (s *service) DeepCopyObject() runtime.Object {
	c := *s
	c.meta = s.copyMeta()
	c.Ports = slices.Clone(s.Ports)
	c.Annotations = maps.Clone(s.Annotations)
	return &c
}

func (s *endpointSlice) DeepCopyObject() runtime.Object {
	c := *s
	c.meta = s.copyMeta()
	c.Ports = slices.Clone(s.Ports)
	c.Endpoints = slices.Clone(s.Endpoints)
	return &c
}

func (p *pod) DeepCopyObject() runtime.Object {
	c := *p
	c.meta = p.copyMeta()
	c.Labels = maps.Clone(p.Labels)
	c.Annotations = maps.Clone(p.Annotations)
	return &c
}

func (n *node) DeepCopyObject() runtime.Object {
	c := *n
	c.meta = n.copyMeta()
	return &c
}

var (
	_ runtime.Object = (*service)(nil)
	_ metav1.Object  = (*service)(nil)
	_ runtime.Object = (*endpointSlice)(nil)
	_ runtime.Object = (*pod)(nil)
	_ runtime.Object = (*node)(nil)
)
