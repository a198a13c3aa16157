package nomad

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/nomad/api"

	"github.com/bowlinemesh/bowline/adapters/nomad/nomadtest"
	"github.com/bowlinemesh/bowline/discovery"
)

// The captured documents (nomadtest/testdata, from a real Nomad agent).

func fixture[T any](t *testing.T, name string) T {
	t.Helper()
	b, err := nomadtest.Fixture(name)
	if err != nil {
		t.Fatal(err)
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func registrations(t *testing.T, names ...string) []registration {
	t.Helper()
	var out []registration
	for _, n := range names {
		for _, r := range fixture[[]*api.ServiceRegistration](t, n) {
			reg, err := convertRegistration(r)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, reg)
		}
	}
	return out
}

const (
	webAlloc1 = "97d9d996-2104-9fe0-29b9-d0b8517baddb"
	apiAlloc  = "60332df0-a55c-f41b-67ca-2a860a1cf0ab"
	node      = "8683cdd5-2884-e08c-4591-ae60477204ae"
)

func TestNomadConvertRegistration(t *testing.T) {
	regs := registrations(t, "service-web.json")
	want := registration{
		ID: "_nomad-task-97d9d996-2104-9fe0-29b9-d0b8517baddb-group-web-web-http", Service: "web", Namespace: "default",
		Datacenter: "dc1", NodeID: node, AllocID: webAlloc1, JobID: "web", Address: "127.0.0.1", Port: 23083,
		Tags: []string{"v1"}, ModifyIndex: 15,
	}
	if len(regs) != 2 || !reflect.DeepEqual(regs[0], want) {
		t.Fatalf("got %+v\nwant %+v", regs, want)
	}
	for name, r := range map[string]*api.ServiceRegistration{
		"nil":        nil,
		"no port":    {ID: "x", ServiceName: "web", Address: "127.0.0.1"},
		"port":       {ID: "x", ServiceName: "web", Address: "127.0.0.1", Port: 70000},
		"no address": {ID: "x", ServiceName: "web", Port: 80},
		"no name":    {ID: "x", Address: "127.0.0.1", Port: 80},
	} {
		if _, err := convertRegistration(r); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
}

func TestNomadConvertAllocation(t *testing.T) {
	a := fixture[*api.Allocation](t, "allocation-api.json")
	info := convertAlloc(a)
	want := []serviceSpec{
		{Name: "api", PortLabel: "http", Meta: map[string]string{"version": "v2", "protocol": "http"}},
		{Name: "api-grpc", PortLabel: "grpc", Meta: map[string]string{"protocol": "grpc"}},
	}
	if !reflect.DeepEqual(info.Services, want) {
		t.Fatalf("services %+v\nwant %+v", info.Services, want)
	}
	if info.Group != "api" || info.AllocModifyIndex != 36 || info.Namespace != "default" {
		t.Fatalf("allocation %+v", info)
	}
	wantPorts := []allocPort{{Label: "http", Value: 30530}, {Label: "grpc", Value: 29869}}
	if !reflect.DeepEqual(info.Ports, wantPorts) {
		t.Fatalf("ports %+v, want %+v", info.Ports, wantPorts)
	}
	for in, out := range map[string]string{
		"${NOMAD_PORT_http}":                   "30530",
		"${NOMAD_HOST_PORT_grpc}":              "29869",
		"${NOMAD_META_team}/${NOMAD_JOB_NAME}": "payments/api",
		"${NOMAD_META_TEAM}":                   "payments",
		"${NOMAD_ALLOC_INDEX}":                 "0",
		"${NOMAD_GROUP_NAME}-${NOMAD_DC}":      "api-dc1",
		"${node.unique.name} ${NOMAD_NOPE}":    "${node.unique.name} ${NOMAD_NOPE}",
		"${NOMAD_PORT_http":                    "${NOMAD_PORT_http",
		"plain":                                "plain",
	} {
		if got := info.interpolate(in); got != out {
			t.Errorf("interpolate(%q) = %q, want %q", in, got, out)
		}
	}

	// Without the job (an Allocation event's payload): no services.
	a.Job = nil
	if info := convertAlloc(a); len(info.Services) != 0 || len(info.Ports) != 2 {
		t.Fatalf("allocation without job: %+v", info)
	}
}

// alloc builds an allocation's info for the table below.
func alloc(id string, ports []allocPort, svcs ...serviceSpec) *allocInfo {
	a := &allocInfo{ID: id, Namespace: "default", Group: "g", Services: svcs, Ports: ports, env: map[string]string{}}
	for _, p := range ports {
		a.env["NOMAD_HOST_PORT_"+p.Label] = itoa(p.Value)
		a.env["NOMAD_PORT_"+p.Label] = itoa(p.Value)
	}
	return a
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func reg(id, svc, allocID string, port uint32, tags ...string) registration {
	return registration{ID: id, Service: svc, Namespace: "default", Datacenter: "dc1", NodeID: node, AllocID: allocID,
		JobID: "j", Address: "10.0.0.1", Port: port, Tags: tags}
}

func TestNomadBuildServices(t *testing.T) {
	td := "bowline.local"
	ident := func(name string) string { return discovery.ServiceIdentity(td, "default", name) }
	cases := []struct {
		name   string
		regs   []registration
		allocs map[string]*allocInfo
		nodes  map[string]nodeInfo
		want   []*discovery.Service
		warns  []string // substrings, in order
	}{{
		name: "captured web registrations without their allocations: tags only",
		regs: registrations(t, "service-web.json"),
		want: []*discovery.Service{{
			ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "web"}, Protocol: discovery.ProtocolTCP,
			Endpoints: []discovery.Endpoint{
				{Address: "127.0.0.1", Port: 23083, Labels: map[string]string{"tags": "v1"}, Locality: discovery.Locality{Region: "dc1"}, Identity: ident("web")},
				{Address: "127.0.0.1", Port: 24433, Labels: map[string]string{"tags": "v1"}, Locality: discovery.Locality{Region: "dc1"}, Identity: ident("web")},
			},
		}},
	}, {
		name:   "captured api registration with its allocation: meta from the job spec",
		regs:   registrations(t, "service-api.json"),
		allocs: map[string]*allocInfo{apiAlloc: convertAlloc(fixture[*api.Allocation](t, "allocation-api.json"))},
		nodes:  map[string]nodeInfo{node: {Zone: "eu-west-1a"}},
		want: []*discovery.Service{{
			ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "api"}, Protocol: discovery.ProtocolHTTP,
			Endpoints: []discovery.Endpoint{{
				Address: "127.0.0.1", Port: 30530, Identity: ident("api"),
				Labels:   map[string]string{"version": "v2", "protocol": "http", "tags": "mesh,v2"},
				Locality: discovery.Locality{Region: "dc1", Zone: "eu-west-1a"},
			}},
		}},
	}, {
		name: "key=value tags give labels, protocol, sidecar port and upstreams; meta wins over tags",
		regs: []registration{reg("r1", "pay", "a1", 8080, "version=v3", "protocol=grpc", "canary", "bowline-sidecar-port=21000", "bowline-upstreams=db:9191,ops/audit:9192")},
		allocs: map[string]*allocInfo{"a1": alloc("a1", nil, serviceSpec{Name: "pay", PortLabel: "http",
			Meta: map[string]string{"version": "v4"}})},
		want: []*discovery.Service{{
			ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "pay"}, Protocol: discovery.ProtocolGRPC,
			Upstreams: []discovery.Upstream{
				{Service: discovery.ServiceKey{Namespace: "default", Name: "db"}, LocalPort: 9191},
				{Service: discovery.ServiceKey{Namespace: "ops", Name: "audit"}, LocalPort: 9192},
			},
			Endpoints: []discovery.Endpoint{{
				Address: "10.0.0.1", Port: 8080, Identity: ident("pay"), SidecarPort: 21000,
				Labels:   map[string]string{"version": "v4", "protocol": "grpc", "tags": "canary"},
				Locality: discovery.Locality{Region: "dc1"},
			}},
		}},
	}, {
		name: "sidecar port by label, by interpolation, and with underscores",
		regs: []registration{reg("r1", "a", "a1", 30000), reg("r2", "b", "a2", 30010), reg("r3", "c", "a3", 30020)},
		allocs: map[string]*allocInfo{
			"a1": alloc("a1", []allocPort{{Label: "http", Value: 30000}, {Label: "sidecar", Value: 30001}},
				serviceSpec{Name: "a", PortLabel: "http", Meta: map[string]string{"bowline-sidecar-port": "sidecar"}}),
			"a2": alloc("a2", []allocPort{{Label: "http", Value: 30010}, {Label: "mesh", Value: 30011}},
				serviceSpec{Name: "b", PortLabel: "http", Meta: map[string]string{"bowline-sidecar-port": "${NOMAD_HOST_PORT_mesh}"}}),
			"a3": alloc("a3", []allocPort{{Label: "http", Value: 30020}},
				serviceSpec{Name: "c", PortLabel: "http", Meta: map[string]string{"bowline_sidecar_port": "30021", "bowline_upstreams": "a:9000"}}),
		},
		want: []*discovery.Service{
			{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "a"}, Protocol: discovery.ProtocolTCP, Endpoints: []discovery.Endpoint{
				{Address: "10.0.0.1", Port: 30000, SidecarPort: 30001, Identity: ident("a"), Locality: discovery.Locality{Region: "dc1"}}}},
			{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "b"}, Protocol: discovery.ProtocolTCP, Endpoints: []discovery.Endpoint{
				{Address: "10.0.0.1", Port: 30010, SidecarPort: 30011, Identity: ident("b"), Locality: discovery.Locality{Region: "dc1"}}}},
			{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "c"}, Protocol: discovery.ProtocolTCP,
				Upstreams: []discovery.Upstream{{Service: discovery.ServiceKey{Namespace: "default", Name: "a"}, LocalPort: 9000}},
				Endpoints: []discovery.Endpoint{
					{Address: "10.0.0.1", Port: 30020, SidecarPort: 30021, Identity: ident("c"), Locality: discovery.Locality{Region: "dc1"}}}},
		},
	}, {
		name: "two service blocks of one name: the one on the registration's port",
		regs: []registration{reg("r1", "db", "a1", 5433)},
		allocs: map[string]*allocInfo{"a1": alloc("a1", []allocPort{{Label: "main", Value: 5432}, {Label: "replica", Value: 5433}},
			serviceSpec{Name: "db", PortLabel: "main", Meta: map[string]string{"role": "primary"}},
			serviceSpec{Name: "db", PortLabel: "replica", Meta: map[string]string{"role": "replica"}, Task: "pg"})},
		want: []*discovery.Service{{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "db"}, Protocol: discovery.ProtocolTCP,
			Endpoints: []discovery.Endpoint{{Address: "10.0.0.1", Port: 5433, Labels: map[string]string{"role": "replica"}, Identity: ident("db"), Locality: discovery.Locality{Region: "dc1"}}}}},
	}, {
		name: "bad values are reported and left out; instances disagreeing on the protocol: the majority wins",
		regs: []registration{reg("r1", "x", "a1", 1001, "protocol=http"), reg("r2", "x", "a2", 1002, "protocol=http"), reg("r3", "x", "a3", 1003, "protocol=carrier-pigeon", "bowline-sidecar-port=nope", "bowline-upstreams=bad,y:0,z:99")},
		want: []*discovery.Service{{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "x"}, Protocol: discovery.ProtocolHTTP,
			Upstreams: []discovery.Upstream{{Service: discovery.ServiceKey{Namespace: "default", Name: "z"}, LocalPort: 99}},
			Endpoints: []discovery.Endpoint{
				{Address: "10.0.0.1", Port: 1001, Labels: map[string]string{"protocol": "http"}, Identity: ident("x"), Locality: discovery.Locality{Region: "dc1"}},
				{Address: "10.0.0.1", Port: 1002, Labels: map[string]string{"protocol": "http"}, Identity: ident("x"), Locality: discovery.Locality{Region: "dc1"}},
				{Address: "10.0.0.1", Port: 1003, Labels: map[string]string{"protocol": "carrier-pigeon"}, Identity: ident("x"), Locality: discovery.Locality{Region: "dc1"}},
			}}},
		warns: []string{"r3: protocol", "r3: bowline-sidecar-port", "r3: bowline-upstreams: \"bad\"", "r3: bowline-upstreams: \"y:0\"", "instances disagree"},
	}, {
		name: "namespaces keep services apart",
		regs: []registration{
			{ID: "r1", Service: "web", Namespace: "prod", Address: "10.0.0.1", Port: 80},
			{ID: "r2", Service: "web", Namespace: "dev", Address: "10.0.0.2", Port: 80},
		},
		want: []*discovery.Service{
			{ServiceKey: discovery.ServiceKey{Namespace: "dev", Name: "web"}, Protocol: discovery.ProtocolTCP, Endpoints: []discovery.Endpoint{{Address: "10.0.0.2", Port: 80, Identity: discovery.ServiceIdentity(td, "dev", "web")}}},
			{ServiceKey: discovery.ServiceKey{Namespace: "prod", Name: "web"}, Protocol: discovery.ProtocolTCP, Endpoints: []discovery.Endpoint{{Address: "10.0.0.1", Port: 80, Identity: discovery.ServiceIdentity(td, "prod", "web")}}},
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, warns := buildServices(c.regs, c.allocs, c.nodes, convertOptions{TrustDomain: td})
			if !reflect.DeepEqual(got, c.want) {
				gj, _ := json.MarshalIndent(got, "", " ")
				wj, _ := json.MarshalIndent(c.want, "", " ")
				t.Fatalf("got %s\nwant %s", gj, wj)
			}
			if len(warns) != len(c.warns) {
				t.Fatalf("warnings %q, want %d", warns, len(c.warns))
			}
			for i, w := range c.warns {
				if !strings.Contains(warns[i], w) {
					t.Errorf("warning %d: %q lacks %q", i, warns[i], w)
				}
			}
			// Deterministic: the same input in another order gives the same output.
			rev := slices.Clone(c.regs)
			slices.Reverse(rev)
			again, _ := buildServices(rev, c.allocs, c.nodes, convertOptions{TrustDomain: td})
			if !reflect.DeepEqual(again, got) {
				t.Fatal("the result depends on the order of the registrations")
			}
		})
	}
}

func TestNomadConvertNode(t *testing.T) {
	for _, c := range []struct {
		n    *api.Node
		zone string
	}{
		{nil, ""},
		{&api.Node{}, ""},
		{&api.Node{Meta: map[string]string{"zone": "z1"}, Attributes: map[string]string{"platform.aws.placement.availability-zone": "us-east-1a"}}, "z1"},
		{&api.Node{Attributes: map[string]string{"platform.aws.placement.availability-zone": "us-east-1a"}}, "us-east-1a"},
		{&api.Node{Attributes: map[string]string{"platform.gce.zone": "us-central1-f"}}, "us-central1-f"},
	} {
		if got := convertNode(c.n).Zone; got != c.zone {
			t.Errorf("zone of %+v = %q, want %q", c.n, got, c.zone)
		}
	}
}
