package config_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/config"
	"github.com/hashicorp/hcl/v2"
)

const badPortSrc = `service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 0
  }
}
`

func TestDiagnosticsJSON(t *testing.T) {
	files := []config.File{file("conf.d/greeter.hcl", badPortSrc)}
	_, diags := config.Parse(files)
	if len(diags) != 1 {
		t.Fatalf("got %d diagnostics, want 1: %v", len(diags), diags)
	}
	got := config.DiagnosticsJSON(diags, sourcesOf(files))
	if len(got) != 1 {
		t.Fatalf("DiagnosticsJSON returned %d entries, want 1", len(got))
	}
	d := got[0]
	want := config.Diagnostic{
		Severity: "error",
		Summary:  "Invalid port",
		Detail:   d.Detail,
		File:     "conf.d/greeter.hcl",
		Line:     5,
		Column:   15, // the value, not the attribute name
		Source:   "    port    = 0",
		Position: "conf.d/greeter.hcl:5:15",
	}
	if d != want {
		t.Errorf("DiagnosticsJSON:\n got  %+v\n want %+v", d, want)
	}
	if !strings.Contains(d.Detail, "65535") {
		t.Errorf("detail %q does not say what is allowed", d.Detail)
	}

	// The JSON form uses the documented field names.
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{"severity": "error", "file": "conf.d/greeter.hcl", "line": 5.0, "column": 15.0, "source": "    port    = 0", "position": "conf.d/greeter.hcl:5:15"} {
		if m[k] != v {
			t.Errorf("JSON %s = %v, want %v (in %s)", k, m[k], v, b)
		}
	}
}

func TestDiagnosticsJSONEdgeCases(t *testing.T) {
	rng := func(file string, line, col int) *hcl.Range {
		return &hcl.Range{Filename: file, Start: hcl.Pos{Line: line, Column: col}, End: hcl.Pos{Line: line, Column: col + 1}}
	}
	sources := map[string][]byte{
		"crlf.hcl": []byte("mesh {\r\n  trust_domain = 1\r\n}\r\n"),
		"a.hcl":    []byte("one\ntwo\n"),
	}
	tests := []struct {
		name string
		diag *hcl.Diagnostic
		want config.Diagnostic
	}{
		{
			name: "warning",
			diag: &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Deprecated", Subject: rng("a.hcl", 2, 1)},
			want: config.Diagnostic{Severity: "warning", Summary: "Deprecated", File: "a.hcl", Line: 2, Column: 1, Source: "two", Position: "a.hcl:2:1"},
		},
		{
			name: "carriage return is not part of the quoted line",
			diag: &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Bad", Subject: rng("crlf.hcl", 2, 18)},
			want: config.Diagnostic{Severity: "error", Summary: "Bad", File: "crlf.hcl", Line: 2, Column: 18, Source: "  trust_domain = 1", Position: "crlf.hcl:2:18"},
		},
		{
			name: "file without source",
			diag: &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Bad", Subject: rng("other.hcl", 1, 1)},
			want: config.Diagnostic{Severity: "error", Summary: "Bad", File: "other.hcl", Line: 1, Column: 1, Position: "other.hcl:1:1"},
		},
		{
			name: "line past the end of the source",
			diag: &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Bad", Subject: rng("a.hcl", 40, 1)},
			want: config.Diagnostic{Severity: "error", Summary: "Bad", File: "a.hcl", Line: 40, Column: 1, Position: "a.hcl:40:1"},
		},
		{
			name: "no subject",
			diag: &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Something global", Detail: "details"},
			want: config.Diagnostic{Severity: "error", Summary: "Something global", Detail: "details"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := config.DiagnosticsJSON(hcl.Diagnostics{tt.diag}, sources)
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if got := config.DiagnosticsJSON(nil, nil); got == nil || len(got) != 0 {
		t.Errorf("no diagnostics render as %#v, want an empty (non-nil) list for JSON []", got)
	}
}

func TestFormatDiagnostics(t *testing.T) {
	files := []config.File{file("greeter.hcl", badPortSrc), file("other.hcl", `service "x" {
  protocol = "smtp"
}
`)}
	_, diags := config.Parse(files)
	out := config.FormatDiagnostics(diags, sourcesOf(files))
	for _, want := range []string{
		"greeter.hcl:5:15: Error: Invalid port",
		"port    = 0", // the offending source line is quoted
		"65535",       // the detail
		"other.hcl:2:14: Error: Invalid protocol",
		`protocol = "smtp"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	warn := config.FormatDiagnostics(hcl.Diagnostics{{Severity: hcl.DiagWarning, Summary: "Careful"}}, nil)
	if !strings.HasPrefix(warn, "Warning: Careful") {
		t.Errorf("a warning without position renders as %q", warn)
	}
}
