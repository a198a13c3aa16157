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
				if proxies[kind].Kind == translate.KindGRPC {
					checkGRPCClusters(t, res)
					checkGRPCListeners(t, res)
				} else {
					checkSidecarListeners(t, res)
				}
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

// TestExamplesCoverFeatures guards the reach of the traffic examples: every
// feature the translation compiles shows, in Envoy's terms, in the golden
// files of the sidecar (read and checked against Envoy's API when they were
// made), so that editing an example cannot silently drop one.
func TestExamplesCoverFeatures(t *testing.T) {
	goldens, err := filepath.Glob(filepath.Join("testdata", "examples", "*.envoy.golden.json"))
	if err != nil || len(goldens) == 0 {
		t.Fatalf("no goldens: %v", err)
	}
	var all strings.Builder
	for _, g := range goldens {
		b, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
	}
	// Compared with whitespace runs as one space, whatever the indentation.
	text := strings.Join(strings.Fields(all.String()), " ")
	for feature, want := range map[string]string{
		"path exact":                 `"path": "/`,
		"path prefix":                `"prefix": "/`,
		"path regex":                 `"safe_regex": {`,
		"methods":                    `"name": ":method"`,
		"header exact":               `"exact": "`,
		"header prefix":              `"string_match": { "prefix": "`,
		"header present":             `"present_match": true`,
		"header inverted":            `"invert_match": true`,
		"query parameter":            `"query_parameters": [`,
		"split":                      `"weighted_clusters": {`,
		"destination service":        `"cluster": "default/reviews"`,
		"split to a service":         `"name": "default/catalog-next", "weight": 20`,
		"redirect prefix":            `"prefix_rewrite": "/shop/"`,
		"redirect host":              `"host_redirect": "`,
		"redirect https":             `"https_redirect": true`,
		"redirect path":              `"path_redirect": "`,
		"rewrite prefix":             `"prefix_rewrite": "/api/"`,
		"rewrite host":               `"host_rewrite_literal": "`,
		"request headers":            `"request_headers_to_add": [`,
		"request header set":         `"append_action": "OVERWRITE_IF_EXISTS_OR_ADD"`,
		"response headers remove":    `"response_headers_to_remove": [`,
		"timeout":                    `"timeout": "`,
		"retries":                    `"retry_policy": {`,
		"per_try_timeout":            `"per_try_timeout": "`,
		"mirror":                     `"request_mirror_policies": [`,
		"fault delay":                `"fixed_delay": "`,
		"fault abort gRPC":           `"grpc_status": 14`,
		"fault abort HTTP":           `"http_status": 503`,
		"least_request":              `"lb_policy": "LEAST_REQUEST"`,
		"least_request choice_count": `"choice_count": 3`,
		"random":                     `"lb_policy": "RANDOM"`,
		"ring_hash":                  `"lb_policy": "RING_HASH"`,
		"maglev":                     `"lb_policy": "MAGLEV"`,
		"hash on a header":           `"header_name": "x-user-id"`,
		"hash on a cookie":           `"cookie": {`,
		"hash on the source IP":      `"source_ip": true`,
		"circuit breaker":            `"circuit_breakers": {`,
		"outlier detection":          `"outlier_detection": {`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("%s: no example's Envoy golden contains %s", feature, want)
		}
	}
}
