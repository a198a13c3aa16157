package config

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Diagnostic is the JSON form of one hcl.Diagnostic, as the admin API shows it.
type Diagnostic struct {
	Severity string `json:"severity"`
	Summary  string `json:"summary"`
	Detail   string `json:"detail,omitempty"`
	File     string `json:"file,omitempty"`
	Line     int    `json:"line,omitempty"`
	Column   int    `json:"column,omitempty"`
	// Source is the offending line of the file.
	Source string `json:"source,omitempty"`
	// Position is "file:line:column", the form editors understand.
	Position string `json:"position,omitempty"`
}

// DiagnosticsJSON converts diagnostics to their JSON form; sources maps file
// names to their content so that the offending line can be quoted.
func DiagnosticsJSON(diags hcl.Diagnostics, sources map[string][]byte) []Diagnostic {
	out := make([]Diagnostic, 0, len(diags))
	for _, d := range diags {
		j := Diagnostic{Summary: d.Summary, Detail: d.Detail, Severity: "error"}
		if d.Severity == hcl.DiagWarning {
			j.Severity = "warning"
		}
		if d.Subject != nil {
			j.File, j.Line, j.Column = d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column
			j.Position = fmt.Sprintf("%s:%d:%d", j.File, j.Line, j.Column)
			if src, ok := sources[j.File]; ok {
				j.Source = sourceLine(src, j.Line)
			}
		}
		out = append(out, j)
	}
	return out
}

func sourceLine(src []byte, line int) string {
	lines := bytes.Split(src, []byte("\n"))
	if line < 1 || line > len(lines) {
		return ""
	}
	return strings.TrimRight(string(lines[line-1]), "\r")
}

// FormatDiagnostics renders diagnostics the way HCL tools do: a header naming
// file:line:column, the summary, the offending source lines and the detail.
func FormatDiagnostics(diags hcl.Diagnostics, sources map[string][]byte) string {
	files := map[string]*hcl.File{}
	for name, src := range sources {
		files[name] = &hcl.File{Bytes: src}
	}
	var b strings.Builder
	for _, d := range diags {
		sev := "Error"
		if d.Severity == hcl.DiagWarning {
			sev = "Warning"
		}
		if d.Subject != nil {
			fmt.Fprintf(&b, "%s:%d:%d: %s: %s\n", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column, sev, d.Summary)
		} else {
			fmt.Fprintf(&b, "%s: %s\n", sev, d.Summary)
		}
		// HCL's writer quotes the source; its own first line repeats the
		// summary, which the header above already gives with the position.
		var body strings.Builder
		_ = hcl.NewDiagnosticTextWriter(&body, files, 100, false).WriteDiagnostic(d)
		_, rest, _ := strings.Cut(body.String(), "\n")
		b.WriteString(rest)
	}
	return b.String()
}
