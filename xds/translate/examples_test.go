package translate_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// TestExamplesGolden translates every file of examples/traffic for the two
// kinds of client that call the routed services (an Envoy sidecar with the
// services as upstreams, and a proxyless gRPC client dialing them) and
// compares the result with testdata/examples/<file>.<kind>.golden.json.
func TestExamplesGolden(t *testing.T) {
	files, err := filepath.Glob("../../examples/traffic/*.hcl")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, path := range files {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(filepath.Base(path), ".hcl")
		cfg, diags := config.Parse([]config.File{{Name: filepath.Base(path), Content: src}})
		if diags.HasErrors() {
			t.Fatalf("%s: %s", path, diags.Error())
		}
		in := translate.Input{Catalog: discovery.NewSnapshot(nil, file.Convert(cfg)), Config: cfg}
		var targets []string
		var upstreams []discovery.Upstream
		for i, s := range in.Catalog.Services() {
			targets = append(targets, s.Name)
			upstreams = append(upstreams, discovery.Upstream{Service: s.ServiceKey, LocalPort: uint32(9001 + i)})
		}
		proxies := map[string]translate.Proxy{
			"envoy": {Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: "default", Name: "client"}, Upstreams: upstreams,
				Locality: discovery.Locality{Region: "eu-west", Zone: "eu-west-1a"}},
			"grpc": {Kind: translate.KindGRPC, Service: discovery.ServiceKey{Namespace: "default", Name: "client"}, Listeners: targets,
				Locality: discovery.Locality{Region: "eu-west", Zone: "eu-west-1a"}},
		}
		for _, kind := range slices.Sorted(func(yield func(string) bool) {
			for k := range proxies {
				if !yield(k) {
					return
				}
			}
		}) {
			t.Run(fmt.Sprintf("%s/%s", name, kind), func(t *testing.T) {
				res, err := translate.Build(in, proxies[kind])
				if err != nil {
					t.Fatalf("Build: %v", err)
				}
				if err := translate.Check(res); err != nil {
					t.Fatalf("Check:\n%v", err)
				}
				checkEDSCompat(t, res)
				got, err := render(res)
				if err != nil {
					t.Fatal(err)
				}
				// A memo shared with other proxies changes nothing.
				memo := translate.NewMemo()
				for _, other := range proxies {
					minput := in
					minput.Memo = memo
					if _, err := translate.Build(minput, other); err != nil {
						t.Fatal(err)
					}
				}
				for range 2 {
					minput := in
					minput.Memo = memo
					mres, err := translate.Build(minput, proxies[kind])
					if err != nil {
						t.Fatal(err)
					}
					if b, _ := render(mres); !bytes.Equal(got, b) {
						t.Fatalf("building with a memo changed the output:\n%s", lineDiff(got, b))
					}
				}
				golden := filepath.Join("testdata", "examples", name+"."+kind+".golden.json")
				if *update {
					if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(golden, got, 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run go test ./xds/translate -run TestExamplesGolden -update to create it)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs (run with -update to accept):\n%s", golden, lineDiff(want, got))
				}
			})
		}
	}
}
