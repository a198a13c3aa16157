package config_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/config"
)

// The file registry at the size of the xDS benchmark (bench/xdsbench): S
// services of E endpoints each, rendered as bench/xdsbench renders them, the
// last endpoint of each on a marker port (30000 + the service's generation)
// that a change bumps.
const (
	benchServices  = 1000
	benchEndpoints = 10
)

func benchServiceHCL(k, gen int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "service \"svc-%04d\" {\n  protocol = \"tcp\"\n", k)
	for j := range benchEndpoints {
		port := 8080
		if j == benchEndpoints-1 {
			port = 30000 + gen
		}
		fmt.Fprintf(&b, "  endpoint {\n    address = \"10.%d.%d.%d\"\n    port    = %d\n  }\n", k/256, k%256, j+1, port)
	}
	b.WriteString("}\n")
	return b.String()
}

// benchFiles is the registry as files: mesh.hcl and either one file holding
// every service or one file per service. A change rewrites the marker port
// of one service in a copy of the content (ports keep 5 digits), so that
// producing the new content costs next to nothing.
type benchFiles struct {
	dir        string
	perService bool
	gens       []int
	svcs       [][]byte // per service
	whole      []byte   // every service, for the one-file layout
	marker     []int    // offset of each service's marker port in whole
}

func newBenchFiles(dir string, perService bool) *benchFiles {
	f := &benchFiles{dir: dir, perService: perService, gens: make([]int, benchServices)}
	for k := range benchServices {
		f.gens[k] = 1
		svc := benchServiceHCL(k, 1)
		f.marker = append(f.marker, len(f.whole)+strings.LastIndex(svc, "30001"))
		f.svcs = append(f.svcs, []byte(svc))
		f.whole = append(f.whole, svc...)
	}
	return f
}

// change bumps service k's generation and returns the file that holds it,
// with its new content.
func (f *benchFiles) change(k int) config.File {
	f.gens[k] = f.gens[k]%29999 + 1
	port := strconv.Itoa(30000 + f.gens[k])
	if f.perService {
		svc := slices.Clone(f.svcs[k])
		copy(svc[bytes.LastIndex(svc, []byte("  port"))+len("  port    = "):], port)
		f.svcs[k] = svc
	} else {
		f.whole = slices.Clone(f.whole)
		copy(f.whole[f.marker[k]:], port)
	}
	return f.file(k)
}

func (f *benchFiles) file(k int) config.File {
	if f.perService {
		return config.File{Name: filepath.Join(f.dir, fmt.Sprintf("svc-%04d.hcl", k)), Content: f.svcs[k]}
	}
	return config.File{Name: filepath.Join(f.dir, "services.hcl"), Content: f.whole}
}

func (f *benchFiles) all() []config.File {
	files := []config.File{{Name: filepath.Join(f.dir, "mesh.hcl"), Content: []byte("mesh {\n  trust_domain = \"bowline.local\"\n}\n")}}
	if !f.perService {
		return append(files, f.file(0))
	}
	for k := range benchServices {
		files = append(files, f.file(k))
	}
	return files
}

// writeAll writes every file into the directory.
func (f *benchFiles) writeAll(b *testing.B) {
	for _, file := range f.all() {
		if err := os.WriteFile(file.Name, file.Content, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// rename writes a file beside its destination and renames it into place,
// as editors and bench/xdsbench do.
func rename(b *testing.B, file config.File) {
	tmp := filepath.Join(filepath.Dir(file.Name), "."+filepath.Base(file.Name)+".tmp")
	if err := os.WriteFile(tmp, file.Content, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, file.Name); err != nil {
		b.Fatal(err)
	}
}

func benchLayouts(b *testing.B, run func(b *testing.B, perService bool)) {
	b.Run("layout=one-file", func(b *testing.B) { run(b, false) })
	b.Run("layout=file-per-service", func(b *testing.B) { run(b, true) })
}

// BenchmarkStoreOneServiceChange measures the store's part of a change to one
// service: decoding the changed file set and publishing the configuration
// (Store.Update, as Store.Run calls it for each set a source sends).
func BenchmarkStoreOneServiceChange(b *testing.B) {
	benchLayouts(b, func(b *testing.B, perService bool) {
		f := newBenchFiles("/cfg", perService)
		files := f.all()
		st := config.NewStore(quietLogger())
		sub, cancel := st.Subscribe()
		defer cancel()
		st.Update(config.FileSet{Source: "dir", Files: files})
		if cfg := <-sub; len(cfg.Services) != benchServices {
			b.Fatalf("%d services, want %d", len(cfg.Services), benchServices)
		}
		index := map[string]int{}
		for i, file := range files {
			index[file.Name] = i
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			k := (i * 7919) % benchServices
			changed := f.change(k)
			files = append([]config.File(nil), files...)
			files[index[changed.Name]] = changed
			st.Update(config.FileSet{Source: "dir", Files: files})
			select {
			case <-sub:
			default:
				b.Fatal("the change was not published")
			}
		}
	})
}

// BenchmarkStoreFirstLoad measures decoding the whole registry once.
func BenchmarkStoreFirstLoad(b *testing.B) {
	benchLayouts(b, func(b *testing.B, perService bool) {
		files := newBenchFiles("/cfg", perService).all()
		b.ReportAllocs()
		for b.Loop() {
			st := config.NewStore(quietLogger())
			st.Update(config.FileSet{Source: "dir", Files: files})
			if cfg := st.Current(); cfg == nil || len(cfg.Services) != benchServices {
				b.Fatal("not loaded")
			}
		}
	})
}

// BenchmarkDirSourceChange measures the directory watch: from a file renamed
// into place to the file set sent, the watch's wait for more changes
// included (ns/op is that latency).
func BenchmarkDirSourceChange(b *testing.B) {
	benchLayouts(b, func(b *testing.B, perService bool) {
		f := newBenchFiles(b.TempDir(), perService)
		f.writeAll(b)
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan config.FileSet)
		done := make(chan struct{})
		go func() {
			defer close(done)
			(&config.DirSource{Dir: f.dir, Log: quietLogger(), Poll: time.Hour}).Run(ctx, out)
		}()
		defer func() { cancel(); <-done }()
		<-out
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			k := (i * 7919) % benchServices
			changed := f.change(k)
			rename(b, changed)
			for fs := range out {
				if got := fileContent(fs, changed.Name); got == string(changed.Content) {
					break
				}
			}
		}
	})
}

func fileContent(fs config.FileSet, name string) string {
	for _, f := range fs.Files {
		if f.Name == name {
			return string(f.Content)
		}
	}
	return ""
}

// The benchmark's change edits what it means to.
func TestBenchFilesChange(t *testing.T) {
	for _, perService := range []bool{false, true} {
		f := newBenchFiles("/cfg", perService)
		for range 3 {
			f.change(7)
		}
		f.change(999)
		var got string
		if perService {
			got = string(f.file(7).Content) + string(f.file(999).Content)
		} else {
			got = string(f.file(0).Content)
		}
		want := benchServiceHCL(7, 4) + benchServiceHCL(999, 2)
		if !perService {
			var b strings.Builder
			for k := range benchServices {
				gen := 1
				switch k {
				case 7:
					gen = 4
				case 999:
					gen = 2
				}
				b.WriteString(benchServiceHCL(k, gen))
			}
			want = b.String()
		}
		if got != want {
			t.Errorf("perService=%v: the content after the changes is not the services rendered anew", perService)
		}
	}
}
