package config_test

import (
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/bowlinemesh/bowline/config"
)

const identityHCL = `identity {
  mtls     = "strict"
  cert_ttl = "1h"

  service "legacy" {
    mtls = "permissive"
  }
  service "payments/ledger" {
    mtls = "disabled"
  }

  join_token "greeter" {
    token = "0123456789abcdef0123"
  }
  join_token "payments/ledger" {
    token_sha256 = "A665A45920422F9D417E4867EFDC4FB8A04A1F3FFF1FA07E998E86F7F7A27AE3"
  }
}
`

func TestIdentityBlock(t *testing.T) {
	cfg := parse(t, file("identity.hcl", identityHCL))
	tests := []struct {
		ns, name string
		want     config.MTLSMode
	}{
		{"default", "greeter", config.MTLSStrict},
		{"default", "legacy", config.MTLSPermissive},
		{"payments", "ledger", config.MTLSDisabled},
		{"payments", "legacy", config.MTLSStrict},
	}
	for _, tt := range tests {
		if got := cfg.MTLSModeFor(tt.ns, tt.name); got != tt.want {
			t.Errorf("MTLSModeFor(%s, %s) = %q, want %q", tt.ns, tt.name, got, tt.want)
		}
	}
	if got := cfg.CertTTL(); got != time.Hour {
		t.Errorf("CertTTL = %s, want 1h", got)
	}
	toks := cfg.JoinTokens()
	if len(toks) != 2 {
		t.Fatalf("JoinTokens = %+v", toks)
	}
	if toks[0].Service != "greeter" || toks[0].Namespace != "default" || toks[0].Token != "0123456789abcdef0123" {
		t.Errorf("first token = %+v", toks[0])
	}
	if toks[1].Service != "ledger" || toks[1].Namespace != "payments" || toks[1].TokenSHA256 != "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3" {
		t.Errorf("second token = %+v", toks[1])
	}
	if toks[0].DeclRange.Start.Line != 12 {
		t.Errorf("join token range = %s, want line 12", toks[0].DeclRange)
	}
}

func TestIdentityDefaults(t *testing.T) {
	for name, cfg := range map[string]*config.Config{
		"no identity block": parse(t, file("a.hcl", `mesh {}`)),
		"empty block":       parse(t, file("a.hcl", `identity {}`)),
		"nil config":        nil,
	} {
		if got := cfg.MTLSModeFor("default", "x"); got != config.MTLSPermissive {
			t.Errorf("%s: mode = %q, want permissive", name, got)
		}
		if got := cfg.CertTTL(); got != 24*time.Hour {
			t.Errorf("%s: ttl = %s, want 24h", name, got)
		}
		if cfg.JoinTokens() != nil {
			t.Errorf("%s: unexpected join tokens", name)
		}
	}
}

func TestIdentityBadInputs(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		line    int
		summary string
	}{
		{"unknown mode", "identity {\n  mtls = \"sometimes\"\n}\n", 2, "Invalid mtls"},
		{"bad ttl", "identity {\n  cert_ttl = \"soon\"\n}\n", 2, "Invalid cert_ttl"},
		{"ttl too short", "identity {\n  cert_ttl = \"10ms\"\n}\n", 2, "Invalid cert_ttl"},
		{"key without cert", "identity {\n  ca_key_file = \"k.pem\"\n}\n", 1, "Incomplete CA"},
		{"service mode missing", "identity {\n  service \"a\" {\n  }\n}\n", 2, "Missing required argument"},
		{"service mode twice", "identity {\n  service \"a\" {\n    mtls = \"strict\"\n  }\n  service \"default/a\" {\n    mtls = \"disabled\"\n  }\n}\n", 5, "Duplicate service mTLS setting"},
		{"bad service name", "identity {\n  service \"a b\" {\n    mtls = \"strict\"\n  }\n}\n", 2, "Invalid service name"},
		{"short token", "identity {\n  join_token \"a\" {\n    token = \"short\"\n  }\n}\n", 3, "Join token too short"},
		{"bad hash", "identity {\n  join_token \"a\" {\n    token_sha256 = \"abc\"\n  }\n}\n", 3, "Invalid token_sha256"},
		{"no secret", "identity {\n  join_token \"a\" {\n  }\n}\n", 2, "Join token needs one secret"},
		{"two secrets", "identity {\n  join_token \"a\" {\n    token = \"0123456789abcdef0123\"\n    token_sha256 = \"a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3\"\n  }\n}\n", 2, "Join token needs one secret"},
		{"two blocks in a file", "identity {}\nidentity {}\n", 2, "Duplicate identity block"},
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

func TestIdentityBlockInTwoFiles(t *testing.T) {
	files := []config.File{file("a.hcl", "identity {}\n"), file("b.hcl", "\nidentity {}\n")}
	_, diags := config.Parse(files)
	if !hasDiag(diags, "b.hcl", 2, "Duplicate identity block") {
		t.Errorf("want the duplicate blamed on b.hcl:2, got:\n%s", config.FormatDiagnostics(diags, sourcesOf(files)))
	}
}

func hasDiag(diags hcl.Diagnostics, file string, line int, summary string) bool {
	for _, d := range diags {
		if d.Severity == hcl.DiagError && d.Summary == summary && d.Subject != nil && d.Subject.Filename == file && d.Subject.Start.Line == line {
			return true
		}
	}
	return false
}
