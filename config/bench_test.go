package config_test

import (
	"context"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/test/registrytest"
)

// The file registry at the size of the xDS benchmark (bench/xdsbench, as
// test/registrytest renders it): S services of E endpoints each.
const (
	benchServices  = 1000
	benchEndpoints = 10
)

func newBenchFiles(dir string, perService bool) *registrytest.Registry {
	return registrytest.New(dir, perService, benchServices, benchEndpoints)
}

func configFile(f registrytest.File) config.File {
	return config.File{Name: f.Name, Content: f.Content}
}

func configFiles(r *registrytest.Registry) []config.File {
	var out []config.File
	for _, f := range r.Files() {
		out = append(out, configFile(f))
	}
	return out
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
		files := configFiles(f)
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
			changed, _ := f.Change(k)
			files = append([]config.File(nil), files...)
			files[index[changed.Name]] = configFile(changed)
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
		files := configFiles(newBenchFiles("/cfg", perService))
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
		dir := b.TempDir()
		f := newBenchFiles(dir, perService)
		if err := f.WriteAll(); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan config.FileSet)
		done := make(chan struct{})
		go func() {
			defer close(done)
			(&config.DirSource{Dir: dir, Log: quietLogger(), Poll: time.Hour}).Run(ctx, out)
		}()
		defer func() { cancel(); <-done }()
		<-out
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			k := (i * 7919) % benchServices
			changed, _ := f.Change(k)
			if err := registrytest.Rename(changed); err != nil {
				b.Fatal(err)
			}
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
