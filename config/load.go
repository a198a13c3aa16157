package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// File is one configuration file, named by its path (or KV key).
type File struct {
	Name    string
	Content []byte
}

// Status tells which files are in force and which were rejected.
type Status struct {
	Files    []FileStatus `json:"files"`
	Rejected []Rejection  `json:"rejected"`
}

// FileStatus is one accepted file.
type FileStatus struct {
	Name string `json:"name"`
	// Hash is the content hash of the version in force.
	Hash string `json:"hash"`
	// Stale is true when a newer version of the file was rejected and this
	// (older) version keeps serving.
	Stale bool `json:"stale,omitempty"`
}

// Rejection is a file version that was refused, with why.
type Rejection struct {
	Name        string          `json:"name"`
	Hash        string          `json:"hash"`
	Diagnostics hcl.Diagnostics `json:"-"`
	// Source is the rejected content, kept to quote offending lines.
	Source []byte    `json:"-"`
	At     time.Time `json:"at"`
	// crossFile is set when the version is valid on its own but conflicts
	// with another file.
	crossFile bool
}

// DiagnosticsJSON renders the rejection's diagnostics.
func (r Rejection) DiagnosticsJSON() []Diagnostic {
	return DiagnosticsJSON(r.Diagnostics, map[string][]byte{r.Name: r.Source})
}

// Text renders the rejection's diagnostics for humans.
func (r Rejection) Text() string {
	return FormatDiagnostics(r.Diagnostics, map[string][]byte{r.Name: r.Source})
}

// Parse decodes a complete set of files with no history: any error in any
// file is returned (this is what `bowline validate` uses).
func Parse(files []File) (*Config, hcl.Diagnostics) {
	l := newLoader()
	var diags hcl.Diagnostics
	for _, f := range files {
		_, d := l.decode(f)
		diags = append(diags, d...)
	}
	if diags.HasErrors() {
		return nil, diags
	}
	cfg, d := assemble(l.fragments(files))
	return cfg, append(diags, d...)
}

type accepted struct {
	hash string
	frag *fragment
}

// loader keeps the last good version of every file.
type loader struct {
	parser *hclparse.Parser
	good   map[string]accepted
	// chunks holds, per file, the chunks of its last version decoded chunk
	// by chunk, by text (chunk.go).
	chunks map[string]map[string]*decodedChunk
}

func newLoader() *loader {
	return &loader{parser: hclparse.NewParser(), good: map[string]accepted{}, chunks: map[string]map[string]*decodedChunk{}}
}

// forget drops what the loader keeps of a file that is gone.
func (l *loader) forget(name string) {
	delete(l.good, name)
	delete(l.chunks, name)
}

func hashOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

func (l *loader) decode(f File) (*fragment, hcl.Diagnostics) {
	if frag, ok := l.decodeChunks(f); ok {
		return frag, nil
	}
	return l.decodeWhole(f)
}

// decodeWhole decodes a file in one piece.
func (l *loader) decodeWhole(f File) (*fragment, hcl.Diagnostics) {
	l.parser = hclparse.NewParser() // the parser caches by name; content may have changed
	file, diags := parseFile(l.parser, f.Name, f.Content)
	if diags.HasErrors() {
		return nil, diags
	}
	frag, d := decodeFile(file)
	return frag, append(diags, d...)
}

func (l *loader) fragments(files []File) map[string]*fragment {
	out := map[string]*fragment{}
	for _, f := range files {
		frag, diags := l.decode(f)
		if !diags.HasErrors() {
			out[f.Name] = frag
		}
	}
	return out
}

// assemble merges fragments (ordered by file name) into a Config and runs the
// checks that span files.
func assemble(frags map[string]*fragment) (*Config, hcl.Diagnostics) {
	return assembleOrdered(frags, slices.Sorted(maps.Keys(frags)))
}

// assembleOrdered is assemble with the files taken in the given order: a
// conflict is reported on the later of the two files.
func assembleOrdered(frags map[string]*fragment, order []string) (*Config, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	cfg := &Config{Mesh: Mesh{TrustDomain: DefaultTrustDomain}}
	var meshRange *hcl.Range
	n := 0
	for _, name := range order {
		n += len(frags[name].services)
	}
	services := make(map[ServiceRef]*ServiceDecl, n) // the services declared, by name
	if n > 0 {
		cfg.Services = make([]*ServiceDecl, 0, n)
	}
	traffic := make([]*fragment, 0, len(order))
	for _, name := range order {
		fr := frags[name]
		if fr.mesh != nil {
			if meshRange != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate mesh block",
					Detail: fmt.Sprintf("The mesh is already configured at %s.", meshRange), Subject: fr.mesh.DeclRange.Ptr()})
			} else {
				meshRange = &fr.mesh.DeclRange
				cfg.Mesh = *fr.mesh
				if cfg.Mesh.TrustDomain == "" {
					cfg.Mesh.TrustDomain = DefaultTrustDomain
				}
			}
		}
		if fr.consul != nil {
			if cfg.Consul != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate consul block",
					Detail: fmt.Sprintf("Consul is already configured at %s.", cfg.Consul.DeclRange), Subject: fr.consul.DeclRange.Ptr()})
			} else {
				cfg.Consul = fr.consul
			}
		}
		if fr.nomad != nil {
			if cfg.Nomad != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate nomad block",
					Detail: fmt.Sprintf("Nomad is already configured at %s.", cfg.Nomad.DeclRange), Subject: fr.nomad.DeclRange.Ptr()})
			} else {
				cfg.Nomad = fr.nomad
			}
		}
		if fr.k8s != nil {
			if cfg.Kubernetes != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate kubernetes block",
					Detail: fmt.Sprintf("Kubernetes is already configured at %s.", cfg.Kubernetes.DeclRange), Subject: fr.k8s.DeclRange.Ptr()})
			} else {
				cfg.Kubernetes = fr.k8s
			}
		}
		if fr.identity != nil {
			if cfg.Identity != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate identity block",
					Detail: fmt.Sprintf("Identity is already configured at %s.", cfg.Identity.DeclRange), Subject: fr.identity.DeclRange.Ptr()})
			} else {
				cfg.Identity = fr.identity
			}
		}
		if fr.tel != nil {
			if cfg.Telemetry != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate telemetry block",
					Detail: fmt.Sprintf("Telemetry is already configured at %s.", cfg.Telemetry.DeclRange), Subject: fr.tel.DeclRange.Ptr()})
			} else {
				cfg.Telemetry = fr.tel
			}
		}
		traffic = append(traffic, fr)
		for _, s := range fr.services {
			key := ServiceRef{Namespace: s.Namespace, Name: s.Name}
			if prev, dup := services[key]; dup {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate service",
					Detail: fmt.Sprintf("Service %s is already declared at %s.", key, prev.DeclRange), Subject: s.DeclRange.Ptr()})
				continue
			}
			services[key] = s
			cfg.Services = append(cfg.Services, s)
		}
	}
	diags = append(diags, assembleTraffic(cfg, traffic, services)...)
	diags = append(diags, assembleAuthz(cfg, traffic, services)...) // authz_check.go
	diags = append(diags, assembleRateLimits(cfg, traffic, services)...)
	for _, d := range diags {
		if d.Severity == hcl.DiagWarning {
			cfg.Warnings = append(cfg.Warnings, d)
		}
	}
	return cfg, diags
}
