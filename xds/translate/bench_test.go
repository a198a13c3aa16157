package translate_test

import (
	"fmt"
	"testing"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// benchInput is a catalog of s services with e endpoints each, the workload
// of bench/ (tcp services, as Consul's default protocol; endpoint addresses
// 10.<k/256>.<k%256>.<j+1>).
func benchInput(s, e int, protocol discovery.Protocol) translate.Input {
	svcs := make([]*discovery.Service, s)
	for k := range s {
		svc := &discovery.Service{
			ServiceKey: discovery.ServiceKey{Namespace: discovery.DefaultNamespace, Name: fmt.Sprintf("svc-%04d", k)},
			Protocol:   protocol,
		}
		for j := range e {
			svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{
				Address: fmt.Sprintf("10.%d.%d.%d", k/256, k%256, j+1),
				Port:    8080,
				Labels:  map[string]string{"version": "v1"},
			})
		}
		svcs[k] = svc
	}
	return translate.Input{
		Catalog: discovery.NewSnapshot(nil, svcs),
		Config:  &config.Config{Mesh: config.Mesh{TrustDomain: config.DefaultTrustDomain}},
	}
}

// BenchmarkBuild translates the configuration of one proxy: an Envoy sidecar
// that receives every service (bench/'s workload: Consul's transparent mode),
// and a proxyless gRPC client that dials ten services, at S = 1,000 services
// of E = 10 endpoints.
func BenchmarkBuild(b *testing.B) {
	const s, e = 1000, 10
	for _, proto := range []discovery.Protocol{discovery.ProtocolTCP, discovery.ProtocolHTTP} {
		in := benchInput(s, e, proto)
		sidecar := translate.Proxy{
			Kind:        translate.KindSidecar,
			Service:     discovery.ServiceKey{Namespace: discovery.DefaultNamespace, Name: "svc-0001"},
			InboundPort: 21000,
			LocalPort:   8080,
			AllServices: true,
		}
		b.Run(fmt.Sprintf("sidecar-all-services/%s/S=%d/E=%d", proto, s, e), func(b *testing.B) {
			benchBuild(b, in, sidecar)
		})
		var targets []string
		for k := range 10 {
			targets = append(targets, fmt.Sprintf("svc-%04d", k*97))
		}
		grpcClient := translate.Proxy{
			Kind:      translate.KindGRPC,
			Service:   discovery.ServiceKey{Namespace: discovery.DefaultNamespace, Name: "client"},
			Listeners: targets,
		}
		b.Run(fmt.Sprintf("proxyless-10-targets/%s/S=%d/E=%d", proto, s, e), func(b *testing.B) {
			benchBuild(b, in, grpcClient)
		})
	}
}

func benchBuild(b *testing.B, in translate.Input, p translate.Proxy) {
	b.ReportAllocs()
	var res *translate.Resources
	for b.Loop() {
		var err error
		if res, err = translate.Build(in, p); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(res.Clusters)), "clusters")
}
