package config_test

import (
	"slices"
	"testing"

	"github.com/bowlinemesh/bowline/config"
)

func TestIdentityAttestBlock(t *testing.T) {
	cfg := parse(t, file("identity.hcl", `identity {
  attest {
    consul {
      address = "https://consul.example:8501"
    }
    nomad {
      audience = "mesh"
      jwks_url = "https://nomad.example:4646/.well-known/jwks.json"
    }
    kubernetes {
      audiences = ["bowline"]
    }
  }
}
`))
	a := cfg.Attest()
	if a == nil || a.Consul == nil || a.Nomad == nil || a.Kubernetes == nil {
		t.Fatalf("attest = %+v", a)
	}
	if a.Consul.Address != "https://consul.example:8501" || a.Nomad.Audience != "mesh" ||
		a.Nomad.JWKSURL != "https://nomad.example:4646/.well-known/jwks.json" || !slices.Equal(a.Kubernetes.Audiences, []string{"bowline"}) {
		t.Errorf("attest = consul %+v, nomad %+v, kubernetes %+v", a.Consul, a.Nomad, a.Kubernetes)
	}
	if a.Nomad.DeclRange.Start.Line != 6 {
		t.Errorf("nomad range = %s, want line 6", a.Nomad.DeclRange)
	}

	only := parse(t, file("a.hcl", "identity {\n  attest {\n    nomad {}\n  }\n}\n")).Attest()
	if only.Consul != nil || only.Kubernetes != nil || only.Nomad == nil || only.Nomad.Audience != config.DefaultNomadAudience {
		t.Errorf("nomad alone: %+v", only)
	}
	for name, cfg := range map[string]*config.Config{"no identity": parse(t, file("a.hcl", "mesh {}")), "no attest": parse(t, file("a.hcl", "identity {}")), "nil": nil} {
		if cfg.Attest() != nil {
			t.Errorf("%s: attest is set", name)
		}
	}
}

func TestIdentityAttestBadInputs(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		line    int
		summary string
	}{
		{"empty audience", "identity {\n  attest {\n    nomad {\n      audience = \"\"\n    }\n  }\n}\n", 4, "Empty audience"},
		{"bad jwks url", "identity {\n  attest {\n    nomad {\n      jwks_url = \"nomad:4646\"\n    }\n  }\n}\n", 4, "Invalid jwks_url"},
		{"two consul blocks", "identity {\n  attest {\n    consul {}\n    consul {}\n  }\n}\n", 4, "Duplicate attest consul block"},
		{"two attest blocks", "identity {\n  attest {}\n  attest {}\n}\n", 3, "Duplicate attest block"},
		{"unknown platform", "identity {\n  attest {\n    vault {}\n  }\n}\n", 3, "Unsupported block type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := []config.File{file("id.hcl", tt.src)}
			_, diags := config.Parse(files)
			if !hasDiag(diags, "id.hcl", tt.line, tt.summary) {
				t.Errorf("want %q at id.hcl:%d, got:\n%s", tt.summary, tt.line, config.FormatDiagnostics(diags, sourcesOf(files)))
			}
		})
	}
}
