package config

import (
	"fmt"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

func TestTelemetryDecode(t *testing.T) {
	src := `telemetry {
  max_series = 500
  dimension "tenant" {
    request_header = "X-Tenant"
  }
  dimension "cache" {
    response_header = "x-cache"
  }
  tracing {
    otlp_address = "otel-collector:4317"
    sampling     = 12.5
  }
}
`
	cfg, diags := Parse([]File{{Name: "t.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	tel := cfg.TelemetrySettings()
	if !tel.Enabled || tel.MaxSeries != 500 {
		t.Fatalf("telemetry = %+v", tel)
	}
	if len(tel.Dimensions) != 2 || tel.Dimensions[0].Label != "tenant" || tel.Dimensions[0].RequestHeader != "x-tenant" ||
		tel.Dimensions[1].Label != "cache" || tel.Dimensions[1].ResponseHeader != "x-cache" {
		t.Fatalf("dimensions = %+v %+v", tel.Dimensions[0], tel.Dimensions[1])
	}
	if tel.Tracing == nil || tel.Tracing.OTLPAddress != "otel-collector:4317" || tel.Tracing.Sampling != 12.5 {
		t.Fatalf("tracing = %+v", tel.Tracing)
	}
	if at := fmt.Sprintf("%s:%d", tel.DeclRange.Filename, tel.DeclRange.Start.Line); at != "t.hcl:1" {
		t.Fatalf("DeclRange %s", at)
	}
}

func TestTelemetryDefaults(t *testing.T) {
	cfg, diags := Parse(nil)
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	tel := cfg.TelemetrySettings()
	if !tel.Enabled || tel.MaxSeries != DefaultMaxSeries || tel.Tracing != nil {
		t.Fatalf("defaults = %+v", tel)
	}
	cfg, diags = Parse([]File{{Name: "t.hcl", Content: []byte("telemetry {\n  enabled = false\n  tracing {\n    otlp_address = \"10.0.0.1:4317\"\n  }\n}\n")}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	if tel := cfg.TelemetrySettings(); tel.Enabled || tel.MaxSeries != DefaultMaxSeries || tel.Tracing.Sampling != DefaultTracingSampling {
		t.Fatalf("settings = %+v %+v", tel, tel.Tracing)
	}
}

func TestTelemetryDiagnostics(t *testing.T) {
	tests := []struct {
		name, src, summary, at string
	}{
		{"max_series too small", "telemetry {\n  max_series = 1\n}\n", "Invalid max_series", "x.hcl:2:16"},
		{"enabled not a bool", "telemetry {\n  enabled = \"maybe\"\n}\n", "Unsuitable value type", "x.hcl:2:14"},
		{"bad label", "telemetry {\n  dimension \"2x\" {\n    request_header = \"x\"\n  }\n}\n", "Invalid dimension name", "x.hcl:2:13"},
		{"reserved label", "telemetry {\n  dimension \"__x\" {\n    request_header = \"x\"\n  }\n}\n", "Invalid dimension name", "x.hcl:2:13"},
		{"standard label", "telemetry {\n  dimension \"response_code\" {\n    request_header = \"x\"\n  }\n}\n", "Invalid dimension name", "x.hcl:2:13"},
		{"no header", "telemetry {\n  dimension \"tenant\" {\n  }\n}\n", "Where does the dimension come from?", "x.hcl:2:3"},
		{"both headers", "telemetry {\n  dimension \"tenant\" {\n    request_header = \"a\"\n    response_header = \"b\"\n  }\n}\n", "Where does the dimension come from?", "x.hcl:2:3"},
		{"bad header", "telemetry {\n  dimension \"tenant\" {\n    request_header = \"x tenant\"\n  }\n}\n", "Invalid header name", "x.hcl:3:22"},
		{"duplicate dimension", "telemetry {\n  dimension \"t\" {\n    request_header = \"a\"\n  }\n  dimension \"t\" {\n    request_header = \"b\"\n  }\n}\n", "Duplicate dimension", "x.hcl:5:13"},
		{"tracing without address", "telemetry {\n  tracing {\n    sampling = 5\n  }\n}\n", "Missing required argument", "x.hcl:2:11"},
		{"tracing bad address", "telemetry {\n  tracing {\n    otlp_address = \"collector\"\n  }\n}\n", "Invalid address", "x.hcl:3:20"},
		{"tracing bad sampling", "telemetry {\n  tracing {\n    otlp_address = \"c:4317\"\n    sampling = 101\n  }\n}\n", "Invalid sampling", "x.hcl:4:16"},
		{"two tracing blocks", "telemetry {\n  tracing {\n    otlp_address = \"c:1\"\n  }\n  tracing {\n    otlp_address = \"c:2\"\n  }\n}\n", "Duplicate tracing block", "x.hcl:5:3"},
		{"two telemetry blocks", "telemetry {\n}\ntelemetry {\n}\n", "Duplicate telemetry block", "x.hcl:3:1"},
		{"unknown attribute", "telemetry {\n  sampling = 1\n}\n", "Unsupported argument", "x.hcl:2:3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, diags := Parse([]File{{Name: "x.hcl", Content: []byte(tt.src)}})
			for _, d := range diags {
				if d.Summary == tt.summary && d.Severity == hcl.DiagError {
					if at := fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column); at != tt.at {
						t.Fatalf("%q at %s, want %s", tt.summary, at, tt.at)
					}
					return
				}
			}
			t.Fatalf("no %q error in:\n%s", tt.summary, diags.Error())
		})
	}
}

// Two files may not both configure telemetry: the later one is blamed.
func TestTelemetryAcrossFiles(t *testing.T) {
	_, diags := Parse([]File{
		{Name: "a.hcl", Content: []byte("telemetry {\n  max_series = 100\n}\n")},
		{Name: "b.hcl", Content: []byte("\ntelemetry {\n  enabled = false\n}\n")},
	})
	if !diags.HasErrors() {
		t.Fatal("no error")
	}
	d := diags[0]
	if d.Summary != "Duplicate telemetry block" || d.Subject.Filename != "b.hcl" || d.Subject.Start.Line != 2 {
		t.Fatalf("diagnostic %s at %s", d.Summary, d.Subject)
	}
}
