package server

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

func scaleServices(s, e int, gen uint32) []*discovery.Service {
	out := make([]*discovery.Service, s)
	for i := range s {
		svc := &discovery.Service{ServiceKey: discovery.ServiceKey{Namespace: "default", Name: fmt.Sprintf("svc-%04d", i)}, Protocol: discovery.ProtocolHTTP}
		for j := range e {
			svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Address: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1), Port: 8080 + gen})
		}
		out[i] = svc
	}
	return out
}

// scaleServer registers n all-services sidecars (each fronting its own
// service) on a server holding s services of e endpoints.
func scaleServer(tb testing.TB, n, s, e int) *Server {
	srv := New(slog.New(slog.DiscardHandler), Options{})
	srv.in = translate.Input{Catalog: discovery.NewSnapshot(nil, scaleServices(s, e, 0)), Config: &config.Config{Mesh: config.Mesh{TrustDomain: "t"}}}
	shared := map[string]*built{}
	for i := range n {
		p := newProxy(fmt.Sprintf("proxy-%d", i), translate.Proxy{Kind: translate.KindSidecar, AllServices: true,
			Service: discovery.ServiceKey{Namespace: "default", Name: fmt.Sprintf("svc-%04d", i%s)}}, "", false)
		srv.proxies[p.id] = p
		srv.rebuildLocked(p, shared, time.Now())
	}
	return srv
}

// BenchmarkApplyChange measures the server's work for one change reaching
// N all-services sidecars (translation, marshalling, handing to the cache;
// no network): one service's endpoints, or every service's.
func BenchmarkApplyChange(b *testing.B) {
	for _, n := range []int{100, 1000} {
		for _, every := range []bool{false, true} {
			name := fmt.Sprintf("N=%d/S=1000/E=10/one-service", n)
			if every {
				name = fmt.Sprintf("N=%d/S=1000/E=10/every-service", n)
			}
			b.Run(name, func(b *testing.B) {
				srv := scaleServer(b, n, 1000, 10)
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					gen := uint32(i%2 + 1)
					services := srv.in.Catalog.Services()
					next := make([]*discovery.Service, len(services))
					changed := map[discovery.ServiceKey]struct{}{}
					for j, svc := range services {
						if every || j == 0 {
							c := svc.Clone()
							for k := range c.Endpoints {
								c.Endpoints[k].Port = 9000 + gen
							}
							next[j] = c
							changed[c.ServiceKey] = struct{}{}
						} else {
							next[j] = svc
						}
					}
					snap := discovery.NewSnapshot(srv.in.Catalog, next)
					srv.apply(snap, nil, changed, false, time.Now())
				}
			})
		}
	}
}
