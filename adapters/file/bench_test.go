package file_test

import (
	"context"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/test/registrytest"
)

// The file registry at the size of the xDS benchmark (bench/xdsbench, as
// test/registrytest renders it): S services of E endpoints each.
const (
	benchServices  = 1000
	benchEndpoints = 10
)

// change bumps service k's generation, renames its file into place, and
// returns its new marker port.
func change(b *testing.B, r *registrytest.Registry, k int) uint32 {
	f, port := r.Change(k)
	if err := registrytest.Rename(f); err != nil {
		b.Fatal(err)
	}
	return port
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
			dir := b.TempDir()
			l := registrytest.New(dir, perService, benchServices, benchEndpoints)
			if err := l.WriteAll(); err != nil {
				b.Fatal(err)
			}
			log := slog.New(slog.DiscardHandler)
			store := config.NewStore(log)
			cat := discovery.NewCatalog(log, discovery.Options{})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{}, 2)
			go func() { store.Run(ctx, &config.DirSource{Dir: dir, Log: log, Poll: time.Hour}); done <- struct{}{} }()
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
				key := discovery.ServiceKey{Namespace: "default", Name: registrytest.ServiceName(k)}
				addr := registrytest.EndpointAddress(k, benchEndpoints-1)
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
				wait(k, change(b, l, k))
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuTime()
			for i := 0; b.Loop(); i++ {
				k := (i * 7919) % benchServices
				wait(k, change(b, l, k))
			}
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}
