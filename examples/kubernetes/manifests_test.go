// Package kubernetes holds the example manifests for running Bowline on
// Kubernetes; its test checks that they decode with client-go's scheme and
// hang together (RBAC, the sidecars' xDS address, the configuration).
package kubernetes

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/bowlinemesh/bowline/config"
)

// strict decodes with client-go's scheme and rejects unknown or duplicate
// fields, so that a misspelt or misplaced field fails the test.
var strict = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict)

// manifests decodes every document of every *.yaml file here.
func manifests(t *testing.T) []runtime.Object {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var out []runtime.Object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(b, []byte("\n---\n")) {
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			obj, gvk, err := strict.UniversalDeserializer().Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s, document %d: %v", f, i+1, err)
			}
			if _, typed := obj.(*runtime.Unknown); typed {
				t.Fatalf("%s, document %d: %s is not a built-in kind", f, i+1, gvk)
			}
			out = append(out, obj)
		}
	}
	return out
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for line := range bytes.SplitSeq(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func all[T runtime.Object](objs []runtime.Object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func find[T interface {
	runtime.Object
	GetName() string
	GetNamespace() string
}](t *testing.T, objs []runtime.Object, ns, name string) T {
	t.Helper()
	for _, o := range all[T](objs) {
		if o.GetName() == name && o.GetNamespace() == ns {
			return o
		}
	}
	var zero T
	t.Fatalf("no %T %s/%s in the manifests", zero, ns, name)
	return zero
}

// flag returns the value following name in args.
func flag(args []string, name string) string {
	i := slices.Index(args, name)
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return args[i+1]
}

func TestRBACGrantsListAndWatch(t *testing.T) {
	objs := manifests(t)
	server := find[*appsv1.Deployment](t, objs, "bowline-system", "bowline")
	sa := server.Spec.Template.Spec.ServiceAccountName
	find[*corev1.ServiceAccount](t, objs, "bowline-system", sa)

	// The roles bound to the server's service account.
	var rules []rbacv1.PolicyRule
	for _, b := range all[*rbacv1.ClusterRoleBinding](objs) {
		bound := slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == "bowline-system"
		})
		if !bound || b.RoleRef.Kind != "ClusterRole" {
			continue
		}
		for _, r := range all[*rbacv1.ClusterRole](objs) {
			if r.Name == b.RoleRef.Name {
				rules = append(rules, r.Rules...)
			}
		}
	}
	allowed := func(group, resource, verb string) bool {
		return slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool {
			return slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb)
		})
	}
	for _, gr := range [][2]string{{"", "services"}, {"discovery.k8s.io", "endpointslices"}, {"", "pods"}, {"", "nodes"}} {
		for _, verb := range []string{"list", "watch"} {
			if !allowed(gr[0], gr[1], verb) {
				t.Errorf("the server's service account %s may not %s %s (group %q)", sa, verb, gr[1], gr[0])
			}
		}
	}
	// Least privilege: reading is all the source does.
	for _, r := range rules {
		for _, v := range r.Verbs {
			if v != "list" && v != "watch" {
				t.Errorf("rule %+v grants %q; the source only lists and watches", r, v)
			}
		}
	}
}

func TestServerDeploymentServesXDSThroughItsService(t *testing.T) {
	objs := manifests(t)
	dep := find[*appsv1.Deployment](t, objs, "bowline-system", "bowline")
	c := dep.Spec.Template.Spec.Containers[0]
	args := append(slices.Clone(c.Command), c.Args...)
	if !slices.Equal(args[:2], []string{"bowline", "server"}) {
		t.Fatalf("the server container runs %v", args)
	}
	if xds := flag(args, "--xds-addr"); xds != "0.0.0.0:15010" {
		t.Errorf("--xds-addr %q: the server must listen on the pod address", xds)
	}
	svc := find[*corev1.Service](t, objs, "bowline-system", "bowline")
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(dep.Spec.Template.Labels)) {
		t.Errorf("service selector %v does not select the server's pods %v", svc.Spec.Selector, dep.Spec.Template.Labels)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 15010 || svc.Spec.Ports[0].TargetPort.StrVal != "grpc-xds" {
		t.Errorf("service ports %+v, want 15010 to grpc-xds", svc.Spec.Ports)
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "grpc-xds" && p.ContainerPort == 15010 }) {
		t.Errorf("container ports %+v lack grpc-xds 15010", c.Ports)
	}

	// The configuration directory comes from a ConfigMap that turns the
	// Kubernetes source on and is valid.
	dir := flag(args, "--config")
	var cmName string
	for _, m := range c.VolumeMounts {
		if m.MountPath == dir {
			for _, v := range dep.Spec.Template.Spec.Volumes {
				if v.Name == m.Name && v.ConfigMap != nil {
					cmName = v.ConfigMap.Name
				}
			}
		}
	}
	cm := find[*corev1.ConfigMap](t, objs, "bowline-system", cmName)
	var files []config.File
	for name, content := range cm.Data {
		files = append(files, config.File{Name: name, Content: []byte(content)})
	}
	cfg, diags := config.Parse(files)
	if diags.HasErrors() {
		t.Fatalf("configuration: %v", diags)
	}
	if cfg.Kubernetes == nil || cfg.Kubernetes.Kubeconfig != "" {
		t.Fatalf("the configuration must enable the kubernetes block with the in-cluster configuration: %+v", cfg.Kubernetes)
	}
}

func TestAppSidecarsRunBowlineEnvoy(t *testing.T) {
	objs := manifests(t)
	xdsSvc := find[*corev1.Service](t, objs, "bowline-system", "bowline")
	wantXDS := fmt.Sprintf("%s.%s.svc:%d", xdsSvc.Name, xdsSvc.Namespace, xdsSvc.Spec.Ports[0].Port)

	var apps int
	for _, dep := range all[*appsv1.Deployment](objs) {
		if dep.Namespace == "bowline-system" {
			continue
		}
		apps++
		t.Run(dep.Name, func(t *testing.T) {
			pod := dep.Spec.Template
			var sidecar *corev1.Container
			for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
				cmd := append(slices.Clone(c.Command), c.Args...)
				if len(cmd) >= 2 && cmd[0] == "bowline" && cmd[1] == "envoy" {
					sidecar = &c
				}
			}
			if sidecar == nil {
				t.Fatalf("no container runs `bowline envoy`")
			}
			if sidecar.RestartPolicy != nil && *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("an init-container sidecar must have restartPolicy Always")
			}
			if slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == sidecar.Name }) &&
				sidecar.RestartPolicy == nil {
				t.Errorf("the sidecar is a plain init container: it would have to exit before the app starts")
			}
			args := append(slices.Clone(sidecar.Command), sidecar.Args...)
			if got := flag(args, "--xds-addr"); got != wantXDS {
				t.Errorf("--xds-addr %q, want the bowline Service %q", got, wantXDS)
			}
			// --service names a Service that selects these pods.
			svc := find[*corev1.Service](t, objs, dep.Namespace, flag(args, "--service"))
			if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
				t.Errorf("service %s does not select the pods %v", svc.Name, pod.Labels)
			}
			// The inbound port is announced to the mesh by the annotation.
			if in := flag(args, "--inbound-port"); in == "" || pod.Annotations["bowline.io/sidecar-port"] != in {
				t.Errorf("--inbound-port %q, annotation bowline.io/sidecar-port %q: they must agree", in, pod.Annotations["bowline.io/sidecar-port"])
			}
			if bp := flag(args, "--bootstrap-path"); bp != "" {
				mounted := slices.ContainsFunc(sidecar.VolumeMounts, func(m corev1.VolumeMount) bool { return strings.HasPrefix(bp, m.MountPath+"/") })
				if !mounted {
					t.Errorf("--bootstrap-path %s is not on a mounted volume", bp)
				}
			}
			// Each pod has a service account: its identity.
			if pod.Spec.ServiceAccountName == "" {
				t.Errorf("no service account: the pods would share the namespace's default identity")
			}
		})
	}
	if apps == 0 {
		t.Fatal("no application Deployment in the manifests")
	}
}
