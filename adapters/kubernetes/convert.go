package kubernetes

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/bowlinemesh/bowline/discovery"
)

// The annotations that steer the adapter.
const (
	annotationPrefix = "bowline.io/"
	// AnnotationPort, on a Service, picks the port the mesh routes to when
	// the Service has several: a port name or number. On a headless Service
	// that declares no ports it is the number the pods listen on.
	AnnotationPort = "bowline.io/port"
	// AnnotationMerge, set to "false" on a Service, keeps it from merging
	// with services of the same namespace and name from other discovery
	// sources (see discovery.LabelMerge).
	AnnotationMerge = "bowline.io/merge"
	// AnnotationUpstreams, on a Service, lists the services its workloads
	// call through their sidecars: "name:port,namespace/name:port".
	AnnotationUpstreams = "bowline.io/upstreams"
	// AnnotationSidecarPort, on a Pod, is the port of its sidecar's inbound
	// listener: mesh traffic to the pod enters there.
	AnnotationSidecarPort = "bowline.io/sidecar-port"
)

// Pod labels that are not copied to endpoints: they change with every
// rollout and say nothing a rule could use.
var droppedPodLabels = map[string]bool{
	"pod-template-hash":        true,
	"controller-revision-hash": true,
	"pod-template-generation":  true,
}

// objects is the content of the informers' caches.
type objects struct {
	services []*service
	slices   []*endpointSlice
	pods     []*pod
	nodes    []*node
}

// convert turns the cached objects into the model. Every Service (except
// ExternalName ones) becomes a discovery.Service with the endpoints of its
// EndpointSlices; see the package documentation for the mapping. The second
// result lists problems worth a warning (an annotation that cannot be read,
// say), sorted and without duplicates.
func convert(in objects, trustDomain string) ([]*discovery.Service, []string) {
	var problems []string
	warnf := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	pods := map[[2]string]*pod{}
	for _, p := range in.pods {
		pods[[2]string{p.Namespace, p.Name}] = p
	}
	nodes := map[string]*node{}
	for _, n := range in.nodes {
		nodes[n.Name] = n
	}
	slicesOf := map[[2]string][]*endpointSlice{}
	for _, s := range in.slices {
		if s.Service == "" {
			continue
		}
		k := [2]string{s.Namespace, s.Service}
		slicesOf[k] = append(slicesOf[k], s)
	}

	var out []*discovery.Service
	for _, s := range in.services {
		if s.ExternalName {
			continue
		}
		key := fmt.Sprintf("%s/%s", s.Namespace, s.Name)
		svc := &discovery.Service{
			ServiceKey: discovery.ServiceKey{Namespace: s.Namespace, Name: s.Name},
			Protocol:   discovery.ProtocolTCP,
			Endpoints:  []discovery.Endpoint{},
		}
		if v, ok := s.Annotations[AnnotationMerge]; ok {
			if b, err := strconv.ParseBool(v); err != nil {
				warnf("service %s: annotation %s=%q is not true or false; ignored", key, AnnotationMerge, v)
			} else if !b {
				svc.Labels = map[string]string{discovery.LabelMerge: "false"}
			}
		}
		if v := s.Annotations[AnnotationUpstreams]; v != "" {
			svc.Upstreams = parseUpstreams(v, s.Namespace, func(msg string) { warnf("service %s: annotation %s: %s", key, AnnotationUpstreams, msg) })
		}
		port, ok := meshPort(s, warnf)
		if !ok {
			out = append(out, svc)
			continue
		}
		svc.Protocol = protocolOf(port)

		sl := slicesOf[[2]string{s.Namespace, s.Name}]
		slices.SortFunc(sl, func(a, b *endpointSlice) int { return strings.Compare(a.Name, b.Name) })
		byAddr := map[string]int{} // address:port -> index in svc.Endpoints
		for _, es := range sl {
			if es.AddressType != "IPv4" && es.AddressType != "IPv6" {
				continue // FQDN slices name hosts, not instances
			}
			target, ok := slicePortFor(es, port)
			if !ok {
				continue
			}
			for _, e := range es.Endpoints {
				ep := endpoint(e, target, pods, nodes, trustDomain, func(format string, args ...any) {
					warnf("service %s: "+format, append([]any{key}, args...)...)
				})
				id := fmt.Sprintf("%s:%d", ep.Address, ep.Port)
				if i, seen := byAddr[id]; seen {
					// The same pod in two slices, which happens briefly while
					// the EndpointSlice controller moves it: keep the
					// healthier one.
					if ep.Health < svc.Endpoints[i].Health {
						svc.Endpoints[i] = ep
					}
					continue
				}
				byAddr[id] = len(svc.Endpoints)
				svc.Endpoints = append(svc.Endpoints, ep)
			}
		}
		out = append(out, svc)
	}
	for _, svc := range out {
		svc.Normalize()
	}
	slices.SortFunc(out, func(a, b *discovery.Service) int { return a.ServiceKey.Compare(b.ServiceKey) })
	slices.Sort(problems)
	return out, slices.Compact(problems)
}

// meshPort picks the Service port the mesh routes to: the one named by the
// bowline.io/port annotation, else the first TCP port. A headless Service
// without ports gets the annotation's number as its port.
func meshPort(s *service, warnf func(string, ...any)) (servicePort, bool) {
	tcp := func(p servicePort) bool { return p.Protocol == "" || p.Protocol == "TCP" }
	if v := s.Annotations[AnnotationPort]; v != "" {
		if len(s.Ports) == 0 && s.Headless {
			if n, err := parsePort(v); err == nil {
				return servicePort{Port: int32(n)}, true
			}
		}
		i := slices.IndexFunc(s.Ports, func(p servicePort) bool { return p.Name == v || strconv.Itoa(int(p.Port)) == v })
		switch {
		case i >= 0 && tcp(s.Ports[i]):
			return s.Ports[i], true
		case i >= 0:
			warnf("service %s/%s: annotation %s=%q names a %s port, and the mesh carries TCP only; using the first TCP port", s.Namespace, s.Name, AnnotationPort, v, s.Ports[i].Protocol)
		default:
			warnf("service %s/%s: annotation %s=%q names no port of the service; using the first TCP port", s.Namespace, s.Name, AnnotationPort, v)
		}
	}
	for _, p := range s.Ports {
		if tcp(p) {
			return p, true
		}
	}
	return servicePort{}, false
}

// slicePortFor finds the port an EndpointSlice gives for the chosen Service
// port: the slice port of the same name (the EndpointSlice controller names
// them after the Service's ports), or, for a headless Service without ports
// (whose slices list none), the annotation's number.
func slicePortFor(es *endpointSlice, p servicePort) (uint32, bool) {
	if len(es.Ports) == 0 && p.Name == "" && p.Port > 0 {
		return uint32(p.Port), true
	}
	for _, sp := range es.Ports {
		if sp.Name == p.Name && sp.Port > 0 && (sp.Protocol == "" || sp.Protocol == "TCP") {
			return uint32(sp.Port), true
		}
	}
	return 0, false
}

// endpoint builds one endpoint from a slice entry, its pod and its node.
func endpoint(e sliceEndpoint, port uint32, pods map[[2]string]*pod, nodes map[string]*node, trustDomain string, warnf func(string, ...any)) discovery.Endpoint {
	ep := discovery.Endpoint{Address: e.Address, Port: port, Health: health(e)}
	p := pods[[2]string{e.PodNamespace, e.PodName}]
	nodeName := e.NodeName
	if p != nil {
		ep.Labels = podLabels(p.Labels)
		if trustDomain != "" {
			sa := cmp.Or(p.ServiceAccount, "default")
			ep.Identity = discovery.ServiceAccountIdentity(trustDomain, p.Namespace, sa)
		}
		if v, ok := p.Annotations[AnnotationSidecarPort]; ok {
			if n, err := parsePort(v); err != nil {
				warnf("pod %s/%s: annotation %s=%q: %v; the pod is reached without its sidecar", p.Namespace, p.Name, AnnotationSidecarPort, v, err)
			} else {
				ep.SidecarPort = n
			}
		}
		nodeName = cmp.Or(nodeName, p.NodeName)
	}
	ep.Zone = e.Zone
	if n := nodes[nodeName]; n != nil {
		ep.Region = n.Region
		ep.Zone = cmp.Or(n.Zone, ep.Zone)
	}
	return ep
}

// health maps the EndpointSlice conditions. A terminating endpoint that
// still serves is degraded: it only gets traffic when no ready endpoint is
// left, so connections drain while it shuts down (kube-proxy's rule for
// terminating endpoints). Anything else that is not ready is unhealthy.
func health(e sliceEndpoint) discovery.Health {
	switch {
	case e.Terminating && e.Serving:
		return discovery.HealthDegraded
	case e.Terminating || !e.Ready:
		return discovery.HealthUnhealthy
	}
	return discovery.HealthHealthy
}

// podLabels copies a pod's labels, less the ones that change with every
// rollout; "version" falls back to app.kubernetes.io/version.
func podLabels(in map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		if !droppedPodLabels[k] {
			out[k] = v
		}
	}
	if _, ok := out["version"]; !ok {
		if v := in["app.kubernetes.io/version"]; v != "" {
			out["version"] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// protocolOf reads a Service port's protocol: its appProtocol when Bowline
// knows it, else the port name (http, http-*, http2, http2-*, grpc, grpc-*,
// tcp, tcp-*), else tcp.
func protocolOf(p servicePort) discovery.Protocol {
	switch strings.ToLower(p.AppProtocol) {
	case "http":
		return discovery.ProtocolHTTP
	case "http2", "h2c", "kubernetes.io/h2c":
		return discovery.ProtocolHTTP2
	case "grpc":
		return discovery.ProtocolGRPC
	case "tcp", "https", "tls", "kubernetes.io/wss":
		return discovery.ProtocolTCP
	}
	name := strings.ToLower(p.Name)
	prefix, _, _ := strings.Cut(name, "-")
	switch {
	case name == "grpc-web" || strings.HasPrefix(name, "grpc-web-"):
		return discovery.ProtocolHTTP
	case prefix == "http":
		return discovery.ProtocolHTTP
	case prefix == "http2":
		return discovery.ProtocolHTTP2
	case prefix == "grpc":
		return discovery.ProtocolGRPC
	}
	return discovery.ProtocolTCP
}

// parseUpstreams reads "name:port,namespace/name:port".
func parseUpstreams(s, ns string, warn func(string)) []discovery.Upstream {
	var out []discovery.Upstream
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, portText, ok := strings.Cut(item, ":")
		port, err := parsePort(portText)
		if !ok || name == "" || err != nil {
			warn(fmt.Sprintf("%q is not name:port or namespace/name:port", item))
			continue
		}
		out = append(out, discovery.Upstream{Service: discovery.ParseServiceKey(name, ns), LocalPort: port})
	}
	return out
}

func parsePort(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port from 1 to 65535", s)
	}
	return uint32(n), nil
}
