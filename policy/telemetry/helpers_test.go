package telemetry

import (
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bowlinemesh/bowline/discovery"
)

type (
	netipAddrPort = netip.AddrPort
	netipAddr     = netip.Addr
	serviceKeyD   = discovery.ServiceKey
)

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// gather renders collectors in Prometheus' text format, as /metrics does.
func gather(t testing.TB, cs ...prometheus.Collector) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.PanicOnError}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}
