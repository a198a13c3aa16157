package kubernetes

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/bowlinemesh/bowline/adapters/kubernetes/kubetest"
	"github.com/bowlinemesh/bowline/discovery"
)

const td = "mesh.test"

// convertAPI runs API objects through the informers' transform and convert.
func convertAPI(t *testing.T, objs ...runtime.Object) ([]*discovery.Service, []string) {
	t.Helper()
	var in objects
	for _, o := range objs {
		c, err := cut(o)
		if err != nil {
			t.Fatal(err)
		}
		switch v := c.(type) {
		case *service:
			in.services = append(in.services, v)
		case *endpointSlice:
			in.slices = append(in.slices, v)
		case *pod:
			in.pods = append(in.pods, v)
		case *node:
			in.nodes = append(in.nodes, v)
		default:
			t.Fatalf("cut(%T) = %T", o, c)
		}
	}
	return convert(in, td)
}

func only(t *testing.T, svcs []*discovery.Service) *discovery.Service {
	t.Helper()
	if len(svcs) != 1 {
		t.Fatalf("want one service, got %d: %s", len(svcs), dump(svcs))
	}
	return svcs[0]
}

func dump(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// addrs renders endpoints as "address:port health".
func addrs(s *discovery.Service) []string {
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, fmt.Sprintf("%s:%d %s", e.Address, e.Port, e.Health))
	}
	return out
}

var (
	web1 = kubetest.PodSpec{Namespace: "shop", Name: "web-1", IP: "10.0.1.1", App: "web", ServiceAccount: "web-sa", Node: "node-a",
		Labels: map[string]string{"version": "v1"}}
	web2 = kubetest.PodSpec{Namespace: "shop", Name: "web-2", IP: "10.0.1.2", App: "web", Node: "node-b",
		Labels: map[string]string{"app.kubernetes.io/version": "v2"}, SidecarPort: 21000}
	nodeA = kubetest.Node("node-a", "eu-west", "eu-west-1a")
	nodeB = kubetest.Node("node-b", "eu-west", "eu-west-1b")
)

func TestConvertMapsAServiceItsSlicesPodsAndNodes(t *testing.T) {
	svc := kubetest.Service("shop", "web", kubetest.Port("grpc", 9090))
	svc.Annotations = map[string]string{AnnotationUpstreams: "cart:9191, billing/ledger:9292", "unrelated": "x"}
	got, problems := convertAPI(t, svc,
		kubetest.EndpointSlice("shop", "web-abc", "web", "grpc", 8080, web1.Endpoint(kubetest.Ready), web2.Endpoint(kubetest.Ready)),
		web1.Pod(), web2.Pod(), nodeA, nodeB)
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	want := &discovery.Service{
		ServiceKey: discovery.ServiceKey{Namespace: "shop", Name: "web"},
		Protocol:   discovery.ProtocolGRPC,
		Upstreams: []discovery.Upstream{
			{Service: discovery.ServiceKey{Namespace: "billing", Name: "ledger"}, LocalPort: 9292},
			{Service: discovery.ServiceKey{Namespace: "shop", Name: "cart"}, LocalPort: 9191},
		},
		Endpoints: []discovery.Endpoint{
			{
				Address: "10.0.1.1", Port: 8080, Labels: map[string]string{"app": "web", "version": "v1"},
				Locality: discovery.Locality{Region: "eu-west", Zone: "eu-west-1a"},
				Identity: "spiffe://mesh.test/ns/shop/sa/web-sa",
			},
			{
				Address: "10.0.1.2", Port: 8080, Labels: map[string]string{"app": "web", "app.kubernetes.io/version": "v2", "version": "v2"},
				Locality: discovery.Locality{Region: "eu-west", Zone: "eu-west-1b"},
				Identity: "spiffe://mesh.test/ns/shop/sa/default", SidecarPort: 21000,
			},
		},
	}
	if g := only(t, got); !g.Equal(want) {
		t.Fatalf("got %s\nwant %s", dump(g), dump(want))
	}
}

func TestConvertHealth(t *testing.T) {
	b := func(v bool) *bool { return &v }
	tests := []struct {
		name string
		cond discoveryv1.EndpointConditions
		want discovery.Health
	}{
		{"ready", discoveryv1.EndpointConditions{Ready: b(true), Serving: b(true), Terminating: b(false)}, discovery.HealthHealthy},
		{"no conditions (the API's defaults: ready)", discoveryv1.EndpointConditions{}, discovery.HealthHealthy},
		{"not ready", discoveryv1.EndpointConditions{Ready: b(false), Serving: b(false), Terminating: b(false)}, discovery.HealthUnhealthy},
		{"not ready, old slice without serving", discoveryv1.EndpointConditions{Ready: b(false)}, discovery.HealthUnhealthy},
		{"terminating, still serving: drains", discoveryv1.EndpointConditions{Ready: b(false), Serving: b(true), Terminating: b(true)}, discovery.HealthDegraded},
		{"terminating, no longer serving", discoveryv1.EndpointConditions{Ready: b(false), Serving: b(false), Terminating: b(true)}, discovery.HealthUnhealthy},
		{"terminating, ready forced by publishNotReadyAddresses", discoveryv1.EndpointConditions{Ready: b(true), Serving: b(true), Terminating: b(true)}, discovery.HealthDegraded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := web1.Endpoint(kubetest.Ready)
			e.Conditions = tt.cond
			got, _ := convertAPI(t, kubetest.Service("shop", "web", kubetest.Port("http", 80)),
				kubetest.EndpointSlice("shop", "web-abc", "web", "http", 8080, e))
			svc := only(t, got)
			if len(svc.Endpoints) != 1 || svc.Endpoints[0].Health != tt.want {
				t.Fatalf("endpoints %v, want one %s", addrs(svc), tt.want)
			}
		})
	}
}

func TestConvertProtocol(t *testing.T) {
	tests := []struct {
		port        string
		appProtocol string
		want        discovery.Protocol
	}{
		{"http", "", discovery.ProtocolHTTP},
		{"http-web", "", discovery.ProtocolHTTP},
		{"HTTP-Web", "", discovery.ProtocolHTTP},
		{"http2", "", discovery.ProtocolHTTP2},
		{"http2-api", "", discovery.ProtocolHTTP2},
		{"grpc", "", discovery.ProtocolGRPC},
		{"grpc-greeter", "", discovery.ProtocolGRPC},
		{"grpc-web", "", discovery.ProtocolHTTP},
		{"tcp-db", "", discovery.ProtocolTCP},
		{"httpx", "", discovery.ProtocolTCP},
		{"web", "", discovery.ProtocolTCP},
		{"", "", discovery.ProtocolTCP},
		{"web", "grpc", discovery.ProtocolGRPC},
		{"web", "http", discovery.ProtocolHTTP},
		{"web", "kubernetes.io/h2c", discovery.ProtocolHTTP2},
		{"web", "h2c", discovery.ProtocolHTTP2},
		{"http-web", "tcp", discovery.ProtocolTCP},             // appProtocol wins
		{"grpc", "https", discovery.ProtocolTCP},               // TLS passes through as TCP
		{"grpc", "example.com/custom", discovery.ProtocolGRPC}, // unknown appProtocol: the name decides
	}
	for _, tt := range tests {
		t.Run(tt.port+"/"+tt.appProtocol, func(t *testing.T) {
			p := kubetest.Port(tt.port, 80)
			if tt.appProtocol != "" {
				p.AppProtocol = &tt.appProtocol
			}
			got, _ := convertAPI(t, kubetest.Service("shop", "web", p))
			if g := only(t, got).Protocol; g != tt.want {
				t.Fatalf("protocol = %s, want %s", g, tt.want)
			}
		})
	}
}

func TestConvertPicksTheMeshPort(t *testing.T) {
	udp := corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}
	multi := func(annotation string) *corev1.Service {
		s := kubetest.Service("shop", "web", udp, kubetest.Port("http-admin", 8081), kubetest.Port("grpc-api", 9090))
		if annotation != "" {
			s.Annotations = map[string]string{AnnotationPort: annotation}
		}
		return s
	}
	// The slices the EndpointSlice controller writes for it: one port per
	// Service port, each with its target port.
	slice := kubetest.EndpointSlice("shop", "web-abc", "web", "http-admin", 18081, web1.Endpoint(kubetest.Ready))
	slice.Ports = append(slice.Ports, slicePortOf("grpc-api", 19090), slicePortOf("dns", 5353))
	tests := []struct {
		name, annotation string
		wantProto        discovery.Protocol
		wantPort         uint32
		wantProblem      string
	}{
		{"first TCP port by default", "", discovery.ProtocolHTTP, 18081, ""},
		{"by name", "grpc-api", discovery.ProtocolGRPC, 19090, ""},
		{"by number", "9090", discovery.ProtocolGRPC, 19090, ""},
		{"an unknown port falls back to the first TCP one", "nope", discovery.ProtocolHTTP, 18081, `names no port`},
		{"a UDP port falls back to the first TCP one", "dns", discovery.ProtocolHTTP, 18081, `names a UDP port`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems := convertAPI(t, multi(tt.annotation), slice)
			svc := only(t, got)
			if svc.Protocol != tt.wantProto || len(svc.Endpoints) != 1 || svc.Endpoints[0].Port != tt.wantPort {
				t.Fatalf("protocol %s endpoints %v, want %s on port %d", svc.Protocol, addrs(svc), tt.wantProto, tt.wantPort)
			}
			if (tt.wantProblem == "") != (len(problems) == 0) || (tt.wantProblem != "" && !strings.Contains(problems[0], tt.wantProblem)) {
				t.Fatalf("problems %q, want one containing %q", problems, tt.wantProblem)
			}
		})
	}
}

func slicePortOf(name string, port int32) discoveryv1.EndpointPort {
	p := corev1.ProtocolTCP
	return discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &p}
}

func TestConvertHeadlessServices(t *testing.T) {
	t.Run("with ports: endpoints like any service", func(t *testing.T) {
		svc := kubetest.Service("shop", "db", kubetest.Port("tcp-pg", 5432))
		svc.Spec.ClusterIP = corev1.ClusterIPNone
		got, _ := convertAPI(t, svc, kubetest.EndpointSlice("shop", "db-x", "db", "tcp-pg", 5432, web1.Endpoint(kubetest.Ready)))
		if g := addrs(only(t, got)); !slices.Equal(g, []string{"10.0.1.1:5432 healthy"}) {
			t.Fatalf("endpoints %v", g)
		}
	})
	noPorts := func(annotation string) (*corev1.Service, *discoveryv1.EndpointSlice) {
		svc := kubetest.Service("shop", "db")
		svc.Spec.ClusterIP = corev1.ClusterIPNone
		if annotation != "" {
			svc.Annotations = map[string]string{AnnotationPort: annotation}
		}
		sl := kubetest.EndpointSlice("shop", "db-x", "db", "", 0, web1.Endpoint(kubetest.Ready))
		sl.Ports = nil // what the controller writes for a Service without ports
		return svc, sl
	}
	t.Run("without ports: the annotation names the pods' port", func(t *testing.T) {
		svc, sl := noPorts("5432")
		got, problems := convertAPI(t, svc, sl)
		if g := addrs(only(t, got)); !slices.Equal(g, []string{"10.0.1.1:5432 healthy"}) || len(problems) != 0 {
			t.Fatalf("endpoints %v, problems %v", g, problems)
		}
	})
	t.Run("without ports or annotation: a service with no endpoints", func(t *testing.T) {
		svc, sl := noPorts("")
		got, _ := convertAPI(t, svc, sl)
		if g := only(t, got); len(g.Endpoints) != 0 {
			t.Fatalf("endpoints %v", addrs(g))
		}
	})
}

func TestConvertSkipsWhatIsNotAnInstance(t *testing.T) {
	ext := kubetest.Service("shop", "external", kubetest.Port("http", 80))
	ext.Spec.Type, ext.Spec.ExternalName = corev1.ServiceTypeExternalName, "example.com"
	fqdn := kubetest.EndpointSlice("shop", "web-fqdn", "web", "http", 8080, web2.Endpoint(kubetest.Ready))
	fqdn.AddressType = discoveryv1.AddressTypeFQDN
	otherPort := kubetest.EndpointSlice("shop", "web-other", "web", "metrics", 9100, web2.Endpoint(kubetest.Ready))
	otherNS := kubetest.EndpointSlice("billing", "web-abc", "web", "http", 8080, web2.Endpoint(kubetest.Ready))
	unlabelled := kubetest.EndpointSlice("shop", "manual", "", "http", 8080, web2.Endpoint(kubetest.Ready))
	got, _ := convertAPI(t, ext, kubetest.Service("shop", "web", kubetest.Port("http", 80)),
		kubetest.EndpointSlice("shop", "web-abc", "web", "http", 8080, web1.Endpoint(kubetest.Ready)),
		fqdn, otherPort, otherNS, unlabelled)
	if g := addrs(only(t, got)); !slices.Equal(g, []string{"10.0.1.1:8080 healthy"}) {
		t.Fatalf("endpoints %v", g)
	}
}

func TestConvertAPodInTwoSlicesIsOneEndpoint(t *testing.T) {
	// While the EndpointSlice controller moves a pod between slices, both
	// may list it: keep it once, the healthier entry.
	got, _ := convertAPI(t, kubetest.Service("shop", "web", kubetest.Port("http", 80)),
		kubetest.EndpointSlice("shop", "web-a", "web", "http", 8080, web1.Endpoint(kubetest.NotReady)),
		kubetest.EndpointSlice("shop", "web-b", "web", "http", 8080, web1.Endpoint(kubetest.Ready)),
		kubetest.EndpointSlice("shop", "web-c", "web", "http", 8080, web1.Endpoint(kubetest.TerminatingServed)))
	if g := addrs(only(t, got)); !slices.Equal(g, []string{"10.0.1.1:8080 healthy"}) {
		t.Fatalf("endpoints %v", g)
	}
}

func TestConvertEndpointDetails(t *testing.T) {
	svc := kubetest.Service("shop", "web", kubetest.Port("http", 80))
	sliceOf := func(e discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return kubetest.EndpointSlice("shop", "web-abc", "web", "http", 8080, e)
	}
	t.Run("no target pod: no labels, no identity", func(t *testing.T) {
		e := web1.Endpoint(kubetest.Ready)
		e.TargetRef = nil
		got, _ := convertAPI(t, svc, sliceOf(e), web1.Pod())
		ep := only(t, got).Endpoints[0]
		if ep.Labels != nil || ep.Identity != "" {
			t.Fatalf("endpoint %+v", ep)
		}
	})
	t.Run("pod not in the cache yet: the endpoint, without pod details", func(t *testing.T) {
		got, _ := convertAPI(t, svc, sliceOf(web1.Endpoint(kubetest.Ready)), nodeA)
		ep := only(t, got).Endpoints[0]
		if ep.Address != "10.0.1.1" || ep.Labels != nil || ep.Identity != "" || ep.Region != "eu-west" {
			t.Fatalf("endpoint %+v", ep)
		}
	})
	t.Run("the version label wins over app.kubernetes.io/version; rollout labels are dropped", func(t *testing.T) {
		p := web1
		p.Labels = map[string]string{"version": "v1", "app.kubernetes.io/version": "1.2.3", "controller-revision-hash": "x"}
		got, _ := convertAPI(t, svc, sliceOf(p.Endpoint(kubetest.Ready)), p.Pod())
		want := map[string]string{"app": "web", "version": "v1", "app.kubernetes.io/version": "1.2.3"}
		if g := only(t, got).Endpoints[0].Labels; !reflect.DeepEqual(g, want) {
			t.Fatalf("labels %v, want %v", g, want)
		}
	})
	t.Run("locality: the node's labels, else the slice's zone; the node from the pod when the slice has none", func(t *testing.T) {
		e := web1.Endpoint(kubetest.Ready)
		e.NodeName = nil
		zone := "slice-zone"
		e.Zone = &zone
		got, _ := convertAPI(t, svc, sliceOf(e), web1.Pod(), nodeA)
		if g := only(t, got).Endpoints[0].Locality; g != (discovery.Locality{Region: "eu-west", Zone: "eu-west-1a"}) {
			t.Fatalf("locality %+v", g)
		}
		got, _ = convertAPI(t, svc, sliceOf(e), web1.Pod())
		if g := only(t, got).Endpoints[0].Locality; g != (discovery.Locality{Zone: "slice-zone"}) {
			t.Fatalf("locality without the node %+v", g)
		}
	})
	t.Run("a bad sidecar port annotation is reported and ignored", func(t *testing.T) {
		p := web1.Pod()
		p.Annotations = map[string]string{AnnotationSidecarPort: "70000"}
		got, problems := convertAPI(t, svc, sliceOf(web1.Endpoint(kubetest.Ready)), p)
		if ep := only(t, got).Endpoints[0]; ep.SidecarPort != 0 || len(problems) != 1 || !strings.Contains(problems[0], "shop/web-1") {
			t.Fatalf("endpoint %+v, problems %v", ep, problems)
		}
	})
	t.Run("no trust domain: no identity", func(t *testing.T) {
		in := objects{
			services: []*service{cutService(svc)},
			slices:   []*endpointSlice{cutEndpointSlice(sliceOf(web1.Endpoint(kubetest.Ready)))},
			pods:     []*pod{cutPod(web1.Pod())},
		}
		got, _ := convert(in, "")
		if id := only(t, got).Endpoints[0].Identity; id != "" {
			t.Fatalf("identity %q", id)
		}
	})
}

func TestConvertMergeAnnotation(t *testing.T) {
	for _, tt := range []struct {
		value     string
		wantLabel bool
		problem   bool
	}{{"false", true, false}, {"False", true, false}, {"true", false, false}, {"no", false, true}} {
		t.Run(tt.value, func(t *testing.T) {
			svc := kubetest.Service("shop", "web", kubetest.Port("http", 80))
			svc.Annotations = map[string]string{AnnotationMerge: tt.value}
			got, problems := convertAPI(t, svc)
			_, has := only(t, got).Labels[discovery.LabelMerge]
			if has != tt.wantLabel || (len(problems) > 0) != tt.problem {
				t.Fatalf("labels %v problems %v", only(t, got).Labels, problems)
			}
		})
	}
}

func TestConvertBadUpstreamsAreReported(t *testing.T) {
	svc := kubetest.Service("shop", "web", kubetest.Port("http", 80))
	svc.Annotations = map[string]string{AnnotationUpstreams: "cart:9191,nope,ledger:0"}
	got, problems := convertAPI(t, svc)
	if u := only(t, got).Upstreams; len(u) != 1 || u[0].Service.Name != "cart" || len(problems) != 2 {
		t.Fatalf("upstreams %v problems %v", u, problems)
	}
}

func TestConvertIsDeterministic(t *testing.T) {
	objs := []runtime.Object{
		kubetest.Service("shop", "web", kubetest.Port("http", 80)), kubetest.Service("default", "api", kubetest.Port("grpc", 80)),
		kubetest.EndpointSlice("shop", "web-b", "web", "http", 8080, web2.Endpoint(kubetest.Ready)),
		kubetest.EndpointSlice("shop", "web-a", "web", "http", 8080, web1.Endpoint(kubetest.Ready)),
		web1.Pod(), web2.Pod(), nodeA, nodeB,
	}
	first, _ := convertAPI(t, objs...)
	slices.Reverse(objs)
	second, _ := convertAPI(t, objs...)
	if !slices.EqualFunc(first, second, (*discovery.Service).Equal) {
		t.Fatalf("order of the caches changed the result:\n%s\n%s", dump(first), dump(second))
	}
	if first[0].Name != "api" || first[1].Name != "web" {
		t.Fatalf("services not sorted: %s", dump(first))
	}
}

// The transform keeps only what the mesh uses, is idempotent, and its
// results are valid cache objects (keyed by namespace/name, deep-copyable).
func TestCut(t *testing.T) {
	p := web1.Pod()
	p.ManagedFields = nil
	p.Annotations = map[string]string{AnnotationSidecarPort: "21000", "kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 1000)}
	c, _ := cut(p)
	cp := c.(*pod)
	if _, ok := cp.Annotations["kubectl.kubernetes.io/last-applied-configuration"]; ok || cp.Annotations[AnnotationSidecarPort] != "21000" {
		t.Fatalf("annotations kept: %v", cp.Annotations)
	}
	again, _ := cut(c)
	if again != c {
		t.Fatal("cut is not idempotent")
	}
	if cp.GetNamespace() != "shop" || cp.GetName() != "web-1" {
		t.Fatalf("meta %s/%s", cp.GetNamespace(), cp.GetName())
	}
	dc := cp.DeepCopyObject().(*pod)
	if !reflect.DeepEqual(dc, cp) {
		t.Fatalf("deep copy differs: %+v", dc)
	}
	dc.Labels["version"] = "changed"
	if cp.Labels["version"] != "v1" {
		t.Fatal("deep copy shares labels")
	}
	for _, o := range []runtime.Object{kubetest.Service("shop", "web"), kubetest.EndpointSlice("shop", "s", "web", "", 80), nodeA} {
		c, _ := cut(o)
		ro := c.(runtime.Object)
		if !reflect.DeepEqual(ro.DeepCopyObject(), ro) {
			t.Fatalf("deep copy of %T differs", ro)
		}
	}
}
