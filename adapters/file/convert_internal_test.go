package file

import (
	"reflect"
	"testing"

	"github.com/bowlinemesh/bowline/config"
)

// sameDecl compares every field of a declaration that Convert reads: a new
// field must be compared too.
func TestSameDeclKnowsEveryField(t *testing.T) {
	for typ, n := range map[reflect.Type]int{
		reflect.TypeFor[config.ServiceDecl]():  7,
		reflect.TypeFor[config.EndpointDecl](): 9,
		reflect.TypeFor[config.UpstreamDecl](): 4,
	} {
		if typ.NumField() != n {
			t.Errorf("%s has %d fields, not %d: teach sameDecl the new ones, then this test", typ, typ.NumField(), n)
		}
	}
	base := func() *config.ServiceDecl {
		return &config.ServiceDecl{Name: "a", Namespace: "default", Protocol: "http", Labels: map[string]string{"k": "v"},
			Endpoints: []*config.EndpointDecl{{Address: "10.0.0.1", Port: 80, Labels: map[string]string{"k": "v"}, Health: "healthy",
				SidecarPort: 21000, Region: "r", Zone: "z", Weight: 2}},
			Upstreams: []*config.UpstreamDecl{{Name: "b", Namespace: "default", LocalPort: 9000}}}
	}
	changes := map[string]func(d *config.ServiceDecl){
		"name":          func(d *config.ServiceDecl) { d.Name = "b" },
		"namespace":     func(d *config.ServiceDecl) { d.Namespace = "x" },
		"protocol":      func(d *config.ServiceDecl) { d.Protocol = "grpc" },
		"labels":        func(d *config.ServiceDecl) { d.Labels["k"] = "w" },
		"endpoints":     func(d *config.ServiceDecl) { d.Endpoints = append(d.Endpoints, d.Endpoints[0]) },
		"address":       func(d *config.ServiceDecl) { d.Endpoints[0].Address = "10.0.0.2" },
		"port":          func(d *config.ServiceDecl) { d.Endpoints[0].Port = 81 },
		"ep labels":     func(d *config.ServiceDecl) { d.Endpoints[0].Labels = nil },
		"health":        func(d *config.ServiceDecl) { d.Endpoints[0].Health = "degraded" },
		"sidecar_port":  func(d *config.ServiceDecl) { d.Endpoints[0].SidecarPort = 0 },
		"region":        func(d *config.ServiceDecl) { d.Endpoints[0].Region = "" },
		"zone":          func(d *config.ServiceDecl) { d.Endpoints[0].Zone = "" },
		"weight":        func(d *config.ServiceDecl) { d.Endpoints[0].Weight = 1 },
		"upstreams":     func(d *config.ServiceDecl) { d.Upstreams = nil },
		"upstream name": func(d *config.ServiceDecl) { d.Upstreams[0].Name = "c" },
		"upstream ns":   func(d *config.ServiceDecl) { d.Upstreams[0].Namespace = "" },
		"local_port":    func(d *config.ServiceDecl) { d.Upstreams[0].LocalPort = 9001 },
	}
	if !sameDecl(base(), base()) {
		t.Error("equal declarations differ")
	}
	for name, change := range changes {
		d := base()
		change(d)
		if sameDecl(base(), d) {
			t.Errorf("a change to %s goes unnoticed", name)
		}
	}
}
