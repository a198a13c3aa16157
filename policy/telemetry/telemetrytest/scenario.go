package telemetrytest

import (
	"context"
	"fmt"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/grpc"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/bootstrap"
)

// MeshHCL is the configuration of the test mesh: frontend (http) calls
// orders (http), which calls payments (grpc); batch is a proxyless gRPC
// client of payments. Every workload has an identity in trust domain
// mesh.test. The rule positions below are asserted by tests: keep lines.
const MeshHCL = `mesh {
  trust_domain = "mesh.test"
  policyd {
    address = "127.0.0.1:15020"
  }
}

telemetry {
  max_series = 1000
  dimension "tenant" {
    request_header = "x-tenant"
  }
}

authorization "payments" {
  rule {
    action = "allow"
    from { services = ["orders", "batch"] }
  }
  rule {
    action = "deny"
    from { services = ["batch"] }
  }
  rule {
    action = "deny"
    mode   = "dry-run"
    to { paths = ["/payments.Payments/Refund"] }
  }
}

service "frontend" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.1"
    port         = 8080
    sidecar_port = 21000
    labels       = { version = "v1" }
  }
  upstream "orders" {
    local_port = 9001
  }
}

service "orders" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.2"
    port         = 8080
    sidecar_port = 21000
    labels       = { version = "v2" }
  }
  upstream "payments" {
    local_port = 9002
  }
}

service "payments" {
  protocol = "grpc"
  endpoint {
    address      = "10.0.0.3"
    port         = 50051
    sidecar_port = 21000
    labels       = { version = "v1" }
  }
}

service "batch" {
  protocol = "grpc"
  endpoint {
    address = "10.0.0.9"
    port    = 7000
  }
}
`

// The positions of the payments rules in MeshHCL (file mesh.hcl).
const (
	MeshFile        = "mesh.hcl"
	DenyBatchRule   = "default/payments/1"
	DenyBatchAt     = MeshFile + ":20"
	DryRunRefund    = "default/payments/2"
	DryRunRefundAt  = MeshFile + ":24"
	TrustDomainTest = "mesh.test"
)

// Principal is the SPIFFE ID of a test mesh service.
func Principal(svc string) string { return discovery.ServiceIdentity(TrustDomainTest, "default", svc) }

// Mesh is the test mesh with one sidecar per service that has one.
type Mesh struct {
	Config   *config.Config
	Catalog  *discovery.Snapshot
	Sidecars map[string]*Sidecar
}

// NewMesh parses MeshHCL (or another configuration in its shape) and builds
// the sidecars of frontend, orders and payments.
func NewMesh(src string) (*Mesh, error) {
	cfg, diags := config.Parse([]config.File{{Name: MeshFile, Content: []byte(src)}})
	if diags.HasErrors() {
		return nil, diags
	}
	m := &Mesh{Config: cfg, Catalog: discovery.NewSnapshot(nil, file.Convert(cfg)), Sidecars: map[string]*Sidecar{}}
	for i, svc := range []struct{ name, version string }{{"frontend", "v1"}, {"orders", "v2"}, {"payments", "v1"}} {
		sc, err := NewSidecar(cfg, m.Catalog, bootstrap.Options{
			Service: svc.name, Namespace: "default", NodeID: svc.name + "-1", Version: svc.version, XDSAddr: "127.0.0.1:15010",
		}, fmt.Sprintf("10.0.0.%d", i+1))
		if err != nil {
			return nil, fmt.Errorf("sidecar %s: %w", svc.name, err)
		}
		sc.Principal = Principal(svc.name)
		m.Sidecars[svc.name] = sc
	}
	return m, nil
}

// Traffic is what one SendChain round sends, for tests to assert on.
type Traffic struct {
	// FrontendOrders requests, of which FrontendOrdersErrors answered 503;
	// even ones carry x-tenant: acme, odd ones globex.
	FrontendOrders, FrontendOrdersErrors int
	// OrdersPayments gRPC requests, of which OrdersPaymentsErrors ended with
	// grpc-status 14, and DryRun more to the refund method, which the
	// dry-run rule would deny.
	OrdersPayments, OrdersPaymentsErrors, DryRun int
	// BatchDenied requests from batch (proxyless) that payments' RBAC
	// denied with DenyBatchRule.
	BatchDenied int
}

// ChainTraffic is the traffic of SendChain(n).
func ChainTraffic(n int) Traffic {
	return Traffic{FrontendOrders: n, FrontendOrdersErrors: n / 20, OrdersPayments: n / 2, OrdersPaymentsErrors: n / 10, DryRun: 2, BatchDenied: 3}
}

// SendChain sends one round of traffic frontend → orders → payments (and
// batch → payments), reported by both sidecars of every call as Envoy
// would, and waits for nothing: Close the sidecars to be sure it arrived.
func (m *Mesh) SendChain(ctx context.Context, conn grpc.ClientConnInterface, n int) error {
	tr := ChainTraffic(n)
	fe, or, pa := m.Sidecars["frontend"], m.Sidecars["orders"], m.Sidecars["payments"]
	now := time.Now()
	var feOut, orIn, orOut, paIn []*alsdata.HTTPAccessLogEntry
	add := func(list *[]*alsdata.HTTPAccessLogEntry, sc *Sidecar, r Request) error {
		e, err := sc.HTTPEntry(r, now)
		if err != nil {
			return err
		}
		*list = append(*list, e)
		return nil
	}
	for i := range tr.FrontendOrders {
		code := uint32(200)
		if i%20 == 19 {
			code = 503
		}
		tenant := "acme"
		if i%2 == 1 {
			tenant = "globex"
		}
		r := Request{Upstream: "default/orders", UpstreamAddress: "10.0.0.2", UpstreamPort: 21000, PeerPrincipal: Principal("orders"),
			Method: "GET", Path: fmt.Sprintf("/api/orders/%d", i), Headers: map[string]string{"x-tenant": tenant},
			Code: code, Duration: time.Duration(20+i%10) * time.Millisecond, ReqBytes: 10, RespBytes: 200}
		if err := add(&feOut, fe, r); err != nil {
			return err
		}
		r.Inbound, r.PeerPrincipal, r.CallerAddress, r.Duration = true, Principal("frontend"), "10.0.0.1", r.Duration-2*time.Millisecond
		if err := add(&orIn, or, r); err != nil {
			return err
		}
	}
	for i := range tr.OrdersPayments + tr.DryRun {
		r := Request{Upstream: "default/payments", UpstreamAddress: "10.0.0.3", UpstreamPort: 21000, PeerPrincipal: Principal("payments"),
			Method: "POST", Path: "/payments.Payments/Charge", Code: 200, GRPCStatus: "0", Duration: 5 * time.Millisecond, ReqBytes: 64, RespBytes: 32}
		if i%5 == 4 && i < tr.OrdersPayments {
			r.GRPCStatus = "14"
		}
		dry := i >= tr.OrdersPayments
		if dry {
			r.Path = "/payments.Payments/Refund"
		}
		if err := add(&orOut, or, r); err != nil {
			return err
		}
		r.Inbound, r.PeerPrincipal, r.CallerAddress, r.AllowedBy = true, Principal("orders"), "10.0.0.2", "default/payments/0"
		if dry {
			r.DryRunDeniedBy = DryRunRefund
		}
		if err := add(&paIn, pa, r); err != nil {
			return err
		}
	}
	for range tr.BatchDenied {
		r := Request{Inbound: true, PeerPrincipal: Principal("batch"), CallerAddress: "10.0.0.9", Method: "POST",
			Path: "/payments.Payments/Charge", Code: 200, GRPCStatus: "7", DeniedBy: DenyBatchRule, Duration: time.Millisecond}
		if err := add(&paIn, pa, r); err != nil {
			return err
		}
	}
	// Envoy sends batches of up to 16 KiB: send in chunks.
	for _, s := range []struct {
		sc       *Sidecar
		inbound  bool
		upstream string
		list     []*alsdata.HTTPAccessLogEntry
	}{{fe, false, "default/orders", feOut}, {or, true, "", orIn}, {or, false, "default/payments", orOut}, {pa, true, "", paIn}} {
		for len(s.list) > 0 {
			k := min(len(s.list), 25)
			if err := s.sc.SendHTTP(ctx, conn, s.inbound, s.upstream, s.list[:k]); err != nil {
				return err
			}
			s.list = s.list[k:]
		}
	}
	return nil
}

// Close closes every sidecar's streams (policyd has then ingested all).
func (m *Mesh) Close() error {
	var first error
	for _, sc := range m.Sidecars {
		if err := sc.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
