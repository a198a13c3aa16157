package policyd

import (
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkCheck is ext_authz Check without the network: the request Envoy
// sends for the policy issue's rule, decided, counted and timed.
func BenchmarkCheck(b *testing.B) {
	a := NewAuthz(slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	a.Update(configOf(b, servicesH+issueRule))
	allow, deny := checkReq("default/orders", frontend, "GET", "/api/orders/1", 8080), checkReq("default/orders", backend, "GET", "/api/orders/1", 8080)
	ctx := b.Context()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		req := allow
		if i&1 == 1 {
			req = deny
		}
		if _, err := a.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
