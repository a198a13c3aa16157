package translate_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// TestPolicyExamplesRateLimitGolden translates examples/policy (all its
// files together) for the sidecar of every service with rate limits, checks
// the result (ValidateAll and consistency) and compares it with
// testdata/examples/policy.<service>.golden.json.
func TestPolicyExamplesRateLimitGolden(t *testing.T) {
	paths, err := filepath.Glob("../../examples/policy/*.hcl")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	var files []config.File
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, config.File{Name: filepath.Base(p), Content: b})
	}
	cfg, diags := config.Parse(files)
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	in := translate.Input{Catalog: discovery.NewSnapshot(nil, file.Convert(cfg)), Config: cfg}
	refs := cfg.RateLimits.Refs()
	if len(refs) == 0 {
		t.Fatal("examples/policy has no rate limits")
	}
	for _, ref := range refs {
		t.Run(ref.Name, func(t *testing.T) {
			res, err := translate.Build(in, translate.Proxy{Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: ref.Namespace, Name: ref.Name}})
			if err != nil {
				t.Fatal(err)
			}
			if err := translate.Check(res); err != nil {
				t.Fatalf("Check:\n%v", err)
			}
			got, err := render(res)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "examples", "policy."+ref.Name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./xds/translate -run TestPolicyExamplesRateLimitGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs (run with -update to accept):\n%s", golden, lineDiff(want, got))
			}
		})
	}
}
