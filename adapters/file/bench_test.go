package file_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// The file registry at the size of the xDS benchmark (bench/xdsbench): S
// services of E endpoints each, the last endpoint of every service on a
// marker port (30000 + the service's generation) that a change bumps.
const (
	benchServices  = 1000
	benchEndpoints = 10
	markerBase     = 30000
)

func benchServiceName(k int) string { return fmt.Sprintf("svc-%04d", k) }

func benchAddress(k, j int) string { return fmt.Sprintf("10.%d.%d.%d", k/256, k%256, j+1) }

// benchServiceHCL renders service k as bench/xdsbench writes it.
func benchServiceHCL(k, gen int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "service %q {\n  protocol = \"tcp\"\n", benchServiceName(k))
	for j := range benchEndpoints {
		port := 8080
		if j == benchEndpoints-1 {
			port = markerBase + gen
		}
		fmt.Fprintf(&b, "  endpoint {\n    address = %q\n    port    = %d\n  }\n", benchAddress(k, j), port)
	}
	b.WriteString("}\n")
	return b.String()
}

// benchLayout writes the registry into a directory and rewrites it after a
// change to one service: one file holding every service, or one file per
// service. Either way the new content is written beside the file under a
// dot name and renamed into place, as editors and bench/xdsbench do. A
// change rewrites the marker port in a copy of the content (ports keep 5
// digits), so that producing the new content costs next to nothing.
type benchLayout struct {
	dir        string
	perService bool
	gens       []int
	svcs       [][]byte // per service
	whole      []byte   // every service, for the one-file layout
	marker     []int    // offset of each service's marker port in whole
}

func newBenchLayout(b *testing.B, perService bool) *benchLayout {
	l := &benchLayout{dir: b.TempDir(), perService: perService, gens: make([]int, benchServices)}
	for k := range benchServices {
		l.gens[k] = 1
		svc := benchServiceHCL(k, 1)
		l.marker = append(l.marker, len(l.whole)+strings.LastIndex(svc, "30001"))
		l.svcs = append(l.svcs, []byte(svc))
		l.whole = append(l.whole, svc...)
	}
	if err := os.WriteFile(filepath.Join(l.dir, "mesh.hcl"), []byte("mesh {\n  trust_domain = \"bowline.local\"\n}\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	if perService {
		for k := range benchServices {
			l.write(b, benchServiceName(k)+".hcl", l.svcs[k])
		}
	} else {
		l.write(b, "services.hcl", l.whole)
	}
	return l
}

func (l *benchLayout) write(b *testing.B, name string, content []byte) {
	tmp := filepath.Join(l.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, content, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(l.dir, name)); err != nil {
		b.Fatal(err)
	}
}

// change bumps service k's generation on disk and returns its new marker port.
func (l *benchLayout) change(b *testing.B, k int) uint32 {
	l.gens[k] = l.gens[k]%29999 + 1
	port := strconv.Itoa(markerBase + l.gens[k])
	if l.perService {
		svc := l.svcs[k]
		copy(svc[bytes.LastIndex(svc, []byte("  port"))+len("  port    = "):], port)
		l.write(b, benchServiceName(k)+".hcl", svc)
	} else {
		copy(l.whole[l.marker[k]:], port)
		l.write(b, "services.hcl", l.whole)
	}
	return uint32(markerBase + l.gens[k])
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFileChangeToSnapshot measures the file registry end to end, as
// `bowline server` wires it: the configuration directory's watch
// (config.DirSource), the config store, this package's source and the
// discovery catalog with its default debounce. One op is a change to one
// service's endpoints renamed into place, until a catalog subscriber
// receives the snapshot carrying it; ns/op is that latency (timers
// included), cpu-ns/op the process's CPU time (user + system) per change,
// B/op and allocs/op everything the process allocated.
func BenchmarkFileChangeToSnapshot(b *testing.B) {
	for _, perService := range []bool{false, true} {
		name := "layout=one-file"
		if perService {
			name = "layout=file-per-service"
		}
		b.Run(name, func(b *testing.B) {
			l := newBenchLayout(b, perService)
			log := slog.New(slog.DiscardHandler)
			store := config.NewStore(log)
			cat := discovery.NewCatalog(log, discovery.Options{})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{}, 2)
			go func() { store.Run(ctx, &config.DirSource{Dir: l.dir, Log: log, Poll: time.Hour}); done <- struct{}{} }()
			go func() { cat.Run(ctx, file.New(store)); done <- struct{}{} }()
			defer func() { cancel(); <-done; <-done }()
			snaps, unsub := cat.Subscribe()
			defer unsub()
			select {
			case <-cat.Ready():
			case <-time.After(time.Minute):
				b.Fatal("no first snapshot")
			}
			if n := cat.Snapshot().Len(); n != benchServices {
				b.Fatalf("first snapshot has %d services, want %d", n, benchServices)
			}
			wait := func(k int, port uint32) {
				key := discovery.ServiceKey{Namespace: "default", Name: benchServiceName(k)}
				addr := benchAddress(k, benchEndpoints-1)
				deadline := time.After(10 * time.Second)
				for {
					select {
					case snap := <-snaps:
						if svc, ok := snap.Service(key); ok {
							for _, e := range svc.Endpoints {
								if e.Address == addr && e.Port == port {
									return
								}
							}
						}
					case <-deadline:
						b.Fatalf("the change to %s (port %d) was not published", key, port)
					}
				}
			}
			// Warm up (the first changes grow the heap to its working size).
			for k := range 3 {
				wait(k, l.change(b, k))
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuTime()
			for i := 0; b.Loop(); i++ {
				k := (i * 7919) % benchServices
				wait(k, l.change(b, k))
			}
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}
