// Package registrytest renders the file registry the xDS benchmark uses (S
// services of E tcp endpoints, written as HCL into a configuration
// directory) for the benchmarks that measure parts of the same path: the
// config store, the file source and catalog, and bench/xdsbench itself.
//
// Service k is "svc-<k>" with endpoints 10.<k/256>.<k%256>.<j+1>; the last
// endpoint listens on a marker port, MarkerBase + the service's generation,
// and every other on AppPort. A change bumps one service's generation.
package registrytest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const (
	AppPort    = 8080  // the application behind each endpoint
	MarkerBase = 30000 // marker ports are MarkerBase + a generation
)

// ServiceName names service k.
func ServiceName(k int) string { return fmt.Sprintf("svc-%04d", k) }

// EndpointAddress is the address of service k's endpoint j.
func EndpointAddress(k, j int) string { return fmt.Sprintf("10.%d.%d.%d", k/256, k%256, j+1) }

// ServiceHCL renders service k with its endpoints at generation gen.
func ServiceHCL(k, endpoints, gen int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "service %q {\n  protocol = \"tcp\"\n", ServiceName(k))
	for j := range endpoints {
		port := AppPort
		if j == endpoints-1 {
			port = MarkerBase + gen
		}
		fmt.Fprintf(&b, "  endpoint {\n    address = %q\n    port    = %d\n  }\n", EndpointAddress(k, j), port)
	}
	b.WriteString("}\n")
	return b.String()
}

// MeshHCL is the registry's mesh.hcl.
const MeshHCL = "mesh {\n  trust_domain = \"bowline.local\"\n}\n"

// File is one file of the registry.
type File struct {
	Name    string // path in the directory
	Content []byte
}

// Registry is the registry as files in dir: mesh.hcl and either one file
// holding every service (services.hcl) or one file per service. Every
// service starts at generation 1. A change rewrites the marker port in a
// copy of the content (marker ports keep 5 digits), so that producing it
// costs next to nothing; contents handed out are never modified.
type Registry struct {
	dir        string
	perService bool
	gens       []int
	svcs       [][]byte // per service
	whole      []byte   // every service, for the one-file layout
	marker     []int    // offset of each service's marker port in whole
}

// New renders services × endpoints into dir (nothing is written yet).
func New(dir string, perService bool, services, endpoints int) *Registry {
	r := &Registry{dir: dir, perService: perService, gens: make([]int, services)}
	for k := range services {
		r.gens[k] = 1
		svc := ServiceHCL(k, endpoints, 1)
		r.marker = append(r.marker, len(r.whole)+strings.LastIndex(svc, strconv.Itoa(MarkerBase+1)))
		r.svcs = append(r.svcs, []byte(svc))
		r.whole = append(r.whole, svc...)
	}
	return r
}

// Change bumps service k's generation and returns the file that holds it,
// with its new content, and the new marker port.
func (r *Registry) Change(k int) (File, uint32) {
	r.gens[k] = r.gens[k]%29999 + 1
	port := strconv.Itoa(MarkerBase + r.gens[k])
	if r.perService {
		svc := slices.Clone(r.svcs[k])
		copy(svc[bytes.LastIndex(svc, []byte("  port"))+len("  port    = "):], port)
		r.svcs[k] = svc
	} else {
		r.whole = slices.Clone(r.whole)
		copy(r.whole[r.marker[k]:], port)
	}
	return r.File(k), uint32(MarkerBase + r.gens[k])
}

// File returns the file that holds service k.
func (r *Registry) File(k int) File {
	if r.perService {
		return File{Name: filepath.Join(r.dir, ServiceName(k)+".hcl"), Content: r.svcs[k]}
	}
	return File{Name: filepath.Join(r.dir, "services.hcl"), Content: r.whole}
}

// Files returns every file of the registry.
func (r *Registry) Files() []File {
	files := []File{{Name: filepath.Join(r.dir, "mesh.hcl"), Content: []byte(MeshHCL)}}
	if !r.perService {
		return append(files, r.File(0))
	}
	for k := range r.svcs {
		files = append(files, r.File(k))
	}
	return files
}

// WriteAll writes every file into the directory.
func (r *Registry) WriteAll() error {
	for _, f := range r.Files() {
		if err := os.WriteFile(f.Name, f.Content, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Rename writes a file beside its destination under a name the
// configuration directory ignores (a leading dot) and renames it into
// place, as editors do.
func Rename(f File) error {
	tmp := filepath.Join(filepath.Dir(f.Name), "."+filepath.Base(f.Name)+".tmp")
	if err := os.WriteFile(tmp, f.Content, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, f.Name)
}
