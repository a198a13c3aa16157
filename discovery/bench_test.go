package discovery

import (
	"fmt"
	"log/slog"
	"testing"
)

// benchService is service k of the xDS benchmark's registry (bench/xdsbench):
// 10 endpoints, the last on a marker port.
func benchService(k, marker int) *Service {
	s := &Service{ServiceKey: ServiceKey{Namespace: "default", Name: fmt.Sprintf("svc-%04d", k)}, Protocol: ProtocolTCP}
	for j := range 10 {
		port := uint32(8080)
		if j == 9 {
			port = uint32(marker)
		}
		s.Endpoints = append(s.Endpoints, Endpoint{Address: fmt.Sprintf("10.%d.%d.%d", k/256, k%256, j+1), Port: port,
			Identity: fmt.Sprintf("spiffe://bowline.local/ns/default/svc/svc-%04d", k)})
	}
	return s
}

// BenchmarkCatalogOneServiceChange measures the catalog's part of a change to
// one service among 1,000 of one source: merging the sources' states and
// building the snapshot (apply and publish, what the catalog's loop does
// after its debounce). The source sends its unchanged services again as the
// same values (as the file registry does: unchanged=same) or as copies
// (unchanged=copies).
func BenchmarkCatalogOneServiceChange(b *testing.B) {
	const services = 1000
	for _, copies := range []bool{false, true} {
		name := "unchanged=same"
		if copies {
			name = "unchanged=copies"
		}
		b.Run(name, func(b *testing.B) {
			c := NewCatalog(slog.New(slog.DiscardHandler), Options{})
			svcs := make([]*Service, services)
			for k := range svcs {
				svcs[k] = benchService(k, 30001)
			}
			c.apply(State{Source: "file", Services: svcs})
			c.publish()
			sub, cancel := c.Subscribe()
			defer cancel()
			<-sub
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				k := (i * 7919) % services
				next := make([]*Service, services)
				for j := range next {
					switch {
					case j == k:
						next[j] = benchService(k, 30002+i%20000)
					case copies:
						next[j] = svcs[j].Clone()
					default:
						next[j] = svcs[j]
					}
				}
				svcs = next
				c.apply(State{Source: "file", Services: svcs})
				c.publish()
				snap := <-sub
				if len(snap.Changed) != 1 {
					b.Fatalf("changed %v, want one service", snap.Changed)
				}
			}
		})
	}
}
