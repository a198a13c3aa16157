package translate_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

var update = flag.Bool("update", false, "rewrite golden files")

// A golden case is a directory under testdata holding:
//
//	input.hcl          services declared exactly as the file registry reads them
//	proxy.json         the translate.Proxy to build for (see proxySpec)
//	envoy.golden.json  the expected resources (rewritten by -update)
const (
	inputFile  = "input.hcl"
	proxyFile  = "proxy.json"
	goldenFile = "envoy.golden.json"
)

// proxySpec is the JSON form of a translate.Proxy. Service names are
// "name" (namespace default) or "namespace/name".
type proxySpec struct {
	Kind        string         `json:"kind"`
	Service     string         `json:"service"`
	InboundPort uint32         `json:"inbound_port"`
	LocalPort   uint32         `json:"local_port"`
	Upstreams   []upstreamSpec `json:"upstreams"`
	Listeners   []string       `json:"listeners"`
	AllServices bool           `json:"all_services"`
	// Identity gives a sidecar the test certificate of testdata/tls;
	// CertProvider names a gRPC client's certificate provider (tls_test.go).
	Identity     bool   `json:"identity"`
	CertProvider string `json:"cert_provider"`
}

type upstreamSpec struct {
	Service   string `json:"service"`
	LocalPort uint32 `json:"local_port"`
}

func (s proxySpec) proxy() translate.Proxy {
	p := translate.Proxy{
		Kind:        translate.Kind(s.Kind),
		Service:     discovery.ParseServiceKey(s.Service, discovery.DefaultNamespace),
		InboundPort: s.InboundPort,
		LocalPort:   s.LocalPort,
		Listeners:   slices.Clone(s.Listeners),
		AllServices: s.AllServices,
		TLS:         s.tls(),
	}
	for _, u := range s.Upstreams {
		p.Upstreams = append(p.Upstreams, discovery.Upstream{
			Service:   discovery.ParseServiceKey(u.Service, p.Service.Namespace),
			LocalPort: u.LocalPort,
		})
	}
	return p
}

type goldenCase struct {
	name  string
	dir   string
	cfg   *config.Config
	proxy translate.Proxy
}

func loadCase(t *testing.T, dir string) goldenCase {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(dir, inputFile))
	if err != nil {
		t.Fatal(err)
	}
	cfg, diags := config.Parse([]config.File{{Name: inputFile, Content: src}})
	if diags.HasErrors() {
		t.Fatalf("%s: %s", inputFile, diags.Error())
	}
	raw, err := os.ReadFile(filepath.Join(dir, proxyFile))
	if err != nil {
		t.Fatal(err)
	}
	var spec proxySpec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		t.Fatalf("%s: %v", proxyFile, err)
	}
	return goldenCase{name: filepath.Base(dir), dir: dir, cfg: cfg, proxy: spec.proxy()}
}

// input builds a fresh catalog snapshot from the case's configuration (a
// snapshot owns and normalizes its services, so every build gets its own).
// A non-nil rng shuffles the order of services, endpoints and upstreams.
func (c goldenCase) input(rng *rand.Rand) translate.Input {
	services := file.Convert(c.cfg)
	if rng != nil {
		rng.Shuffle(len(services), func(i, j int) { services[i], services[j] = services[j], services[i] })
		for _, s := range services {
			rng.Shuffle(len(s.Endpoints), func(i, j int) { s.Endpoints[i], s.Endpoints[j] = s.Endpoints[j], s.Endpoints[i] })
			rng.Shuffle(len(s.Upstreams), func(i, j int) { s.Upstreams[i], s.Upstreams[j] = s.Upstreams[j], s.Upstreams[i] })
		}
	}
	return translate.Input{Catalog: discovery.NewSnapshot(nil, services), Config: c.cfg, TrustBundle: testBundle}
}

func shuffledProxy(p translate.Proxy, rng *rand.Rand) translate.Proxy {
	p.Upstreams = slices.Clone(p.Upstreams)
	p.Listeners = slices.Clone(p.Listeners)
	rng.Shuffle(len(p.Upstreams), func(i, j int) { p.Upstreams[i], p.Upstreams[j] = p.Upstreams[j], p.Upstreams[i] })
	rng.Shuffle(len(p.Listeners), func(i, j int) { p.Listeners[i], p.Listeners[j] = p.Listeners[j], p.Listeners[i] })
	return p
}

// render is the golden form of a proxy's resources: one object grouping the
// resources by type in a fixed order, each list in the order Build returns
// (by name), each resource as protojson with Envoy's field names, re-indented
// through encoding/json because protojson's spacing is deliberately unstable.
// The renderer is the test's own so that the golden files do not move when
// translate.JSON (the config dump format) does.
func render(r *translate.Resources) ([]byte, error) {
	type group struct {
		Name  string
		Items []json.RawMessage
	}
	marshal := protojson.MarshalOptions{UseProtoNames: true}
	var groups []group
	for _, g := range []struct {
		name string
		list []types.Resource
	}{
		{"listeners", r.Listeners}, {"routes", r.Routes}, {"clusters", r.Clusters},
		{"endpoints", r.Endpoints}, {"secrets", r.Secrets},
	} {
		items := []json.RawMessage{}
		for _, res := range g.list {
			b, err := marshal.Marshal(res)
			if err != nil {
				return nil, fmt.Errorf("render %s %q: %w", g.name, translate.ResourceName(res), err)
			}
			items = append(items, b)
		}
		groups = append(groups, group{g.name, items})
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, g := range groups {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, "%q:[", g.Name)
		for j, it := range g.Items {
			if j > 0 {
				buf.WriteByte(',')
			}
			buf.Write(it)
		}
		buf.WriteByte(']')
	}
	buf.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, buf.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

func caseDirs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			if _, err := os.Stat(filepath.Join("testdata", e.Name(), inputFile)); err == nil {
				dirs = append(dirs, filepath.Join("testdata", e.Name()))
			}
		}
	}
	if len(dirs) == 0 {
		t.Fatal("no golden cases under testdata")
	}
	return dirs
}

func TestGolden(t *testing.T) {
	for _, dir := range caseDirs(t) {
		c := loadCase(t, dir)
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			in := c.input(nil)
			res, err := translate.Build(in, c.proxy)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if err := translate.Check(res); err != nil {
				t.Errorf("Check:\n%v", err)
			}
			checkEDSCompat(t, res)
			checkServices(t, res)
			if c.proxy.Kind == translate.KindGRPC {
				checkGRPCClusters(t, res)
				checkGRPCListeners(t, res)
			} else {
				checkSidecarListeners(t, res)
			}
			got, err := render(res)
			if err != nil {
				t.Fatal(err)
			}

			// Determinism: the same input builds byte-identical output.
			again, err := translate.Build(in, c.proxy)
			if err != nil {
				t.Fatalf("second Build: %v", err)
			}
			if b, _ := render(again); !bytes.Equal(got, b) {
				t.Errorf("building twice gave different output:\n%s", lineDiff(got, b))
			}
			for _, l := range [][2][]types.Resource{
				{res.Listeners, again.Listeners}, {res.Routes, again.Routes}, {res.Clusters, again.Clusters},
				{res.Endpoints, again.Endpoints}, {res.Secrets, again.Secrets},
			} {
				if !translate.Equal(l[0], l[1]) {
					t.Errorf("translate.Equal is false for two builds of the same input")
				}
			}

			// Input order does not matter.
			for seed := range uint64(8) {
				rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
				shuffled, err := translate.Build(c.input(rng), shuffledProxy(c.proxy, rng))
				if err != nil {
					t.Fatalf("Build (shuffled, seed %d): %v", seed, err)
				}
				if b, _ := render(shuffled); !bytes.Equal(got, b) {
					t.Errorf("shuffled input (seed %d) changed the output:\n%s", seed, lineDiff(got, b))
				}
				if !slices.Equal(res.Services, shuffled.Services) {
					t.Errorf("shuffled input (seed %d) changed Services: %v != %v", seed, res.Services, shuffled.Services)
				}
			}

			path := filepath.Join(c.dir, goldenFile)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./xds/translate -run TestGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs (run with -update to accept):\n%s", path, lineDiff(want, got))
			}
		})
	}
}

// checkServices verifies that Resources.Services, which decides which catalog
// changes reach the proxy, is sorted and names every service with a cluster.
func checkServices(t *testing.T, res *translate.Resources) {
	t.Helper()
	if !slices.IsSortedFunc(res.Services, discovery.ServiceKey.Compare) {
		t.Errorf("Services not sorted: %v", res.Services)
	}
	for _, r := range res.Clusters {
		c := r.(*cluster.Cluster)
		if c.GetType() != cluster.Cluster_EDS {
			continue
		}
		if !slices.ContainsFunc(res.Services, func(k discovery.ServiceKey) bool { return translate.ClusterName(k) == c.GetName() }) {
			t.Errorf("cluster %q: its service is missing from Services %v", c.GetName(), res.Services)
		}
	}
}

// lineDiff shows the first differing lines of two renderings, enough to see
// what moved without a diff library.
func lineDiff(want, got []byte) string {
	wl, gl := bytes.Split(want, []byte("\n")), bytes.Split(got, []byte("\n"))
	var b bytes.Buffer
	shown := 0
	for i := 0; i < max(len(wl), len(gl)) && shown < 20; i++ {
		var w, g []byte
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if !bytes.Equal(w, g) {
			fmt.Fprintf(&b, "line %d:\n  want: %s\n  got:  %s\n", i+1, w, g)
			shown++
		}
	}
	return b.String()
}
