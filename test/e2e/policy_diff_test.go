package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extauthzhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/policy"
	"github.com/bowlinemesh/bowline/policy/policyd"
	"github.com/bowlinemesh/bowline/test/meshtest"
	"github.com/bowlinemesh/bowline/xds/bootstrap"
	"github.com/bowlinemesh/bowline/xds/controlplane"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// The differential test: generated policies and requests, each request
// decided three ways that must agree:
//
//  1. policyd's evaluator (policy.Evaluator), in this process;
//  2. policyd's ext_authz service over gRPC, sent the CheckRequest an Envoy
//     sidecar of the destination would send (go-control-plane's types, with
//     the context extensions read from the sidecar configuration that
//     translate generates);
//  3. gRPC-Go's RBAC on a real xDS-enabled gRPC server, configured by an
//     in-process bowline server, called over mTLS by clients whose
//     certificates carry the source principal.
//
// BOWLINE_DIFF_SEED replays a run; the seed is logged.

var (
	diffClients = []string{
		"spiffe://mesh.test/ns/default/svc/frontend",
		"spiffe://mesh.test/ns/default/svc/backend",
		"spiffe://mesh.test/ns/payments/svc/api",
		"spiffe://mesh.test/ns/staging-eu/sa/worker",
		"spiffe://mesh.test/ns/default/sa/frontend-sa",
	}
	diffAuthorities = []string{"Orders.Example.com", "api.internal:8443"}
	diffMethods     = []string{
		"/grpc.testing.TestService/UnaryCall", "/grpc.testing.TestService/EmptyCall",
		"/grpc.testing.TestService/CacheableUnaryCall", "/grpc.testing.TestService/UnimplementedCall",
	}
	diffHeaderValues = map[string][]string{"x-a": {"alpha", "beta-1", "Alpha", ""}, "x-b": {"42", "x", ""}}

	genPrincipals = []string{
		"spiffe://mesh.test/ns/default/svc/frontend", "spiffe://mesh.test/ns/payments/svc/api", "spiffe://mesh.test/ns/staging-eu/sa/worker",
		"spiffe://mesh.test/ns/payments/*", "spiffe://mesh.test/ns/default/*", "*/svc/frontend", "*/sa/worker", "*-sa", "*",
	}
	genServices   = []string{"frontend", "backend", "payments/api", "ghost"}
	genNamespaces = []string{"default", "payments", "staging-*", "*-eu", "pay*", "*"}
	genMethods    = []string{"POST", "GET", "*"}
	genPaths      = []string{
		"/grpc.testing.TestService/UnaryCall", "/grpc.testing.TestService/EmptyCall", "/grpc.testing.TestService/*",
		"*Call", "*/EmptyCall", "*UnaryCall", "/grpc.testing.*", "/other/*", "*",
	}
	genHosts   = []string{"orders.example.com", "ORDERS.example.COM", "*.internal:8443", "api.*", "*.example.com", "nothing.test", "*"}
	genValues  = []string{"alpha", "alp*", "*-1", "Alpha", "42", "*"}
	genRegexes = []string{"[0-9]+", "al.*", "beta-[0-9]", ".*"}
)

type diffRequest struct {
	client    int
	authority int
	method    string
	headers   map[string]string
}

func (r diffRequest) String() string {
	var hs []string
	for _, k := range slices.Sorted(maps.Keys(r.headers)) {
		hs = append(hs, fmt.Sprintf("%s=%q", k, r.headers[k]))
	}
	return fmt.Sprintf("%s -> POST %s (authority %s, headers [%s])", diffClients[r.client], r.method, diffAuthorities[r.authority], strings.Join(hs, " "))
}

func pickN(r *rand.Rand, pool []string, max int) []string {
	n := 1 + r.IntN(max)
	out := make([]string, 0, n)
	for range n {
		out = append(out, pool[r.IntN(len(pool))])
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func quoted(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = strconv.Quote(v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// genAttrs writes 1 or 2 attributes drawn from gens, on one line (a
// one-line block with several arguments, as docs/policy.md writes them).
func genAttrs(r *rand.Rand, gens map[string]func() string) string {
	names := slices.Sorted(maps.Keys(gens))
	r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	var parts []string
	for _, n := range names[:1+r.IntN(2)] {
		parts = append(parts, n+" = "+gens[n]())
	}
	return strings.Join(parts, "  ")
}

func genRule(r *rand.Rand, port int) string {
	var b strings.Builder
	b.WriteString("  rule {\n")
	fmt.Fprintf(&b, "    action = %q\n", []string{"allow", "deny"}[r.IntN(2)])
	if r.IntN(8) == 0 {
		b.WriteString("    mode   = \"dry-run\"\n")
	}
	from := map[string]func() string{
		"principals": func() string { return quoted(pickN(r, genPrincipals, 2)) }, "not_principals": func() string { return quoted(pickN(r, genPrincipals, 2)) },
		"services": func() string { return quoted(pickN(r, genServices, 2)) }, "not_services": func() string { return quoted(pickN(r, genServices, 2)) },
		"namespaces": func() string { return quoted(pickN(r, genNamespaces, 2)) }, "not_namespaces": func() string { return quoted(pickN(r, genNamespaces, 2)) },
	}
	ports := func() string {
		ps := []string{strconv.Itoa(port), strconv.Itoa(port + 1)}
		return "[" + strings.Join(pickN(r, ps, 2), ", ") + "]"
	}
	to := map[string]func() string{
		"methods": func() string { return quoted(pickN(r, genMethods, 2)) }, "not_methods": func() string { return quoted(pickN(r, genMethods, 1)) },
		"paths": func() string { return quoted(pickN(r, genPaths, 2)) }, "not_paths": func() string { return quoted(pickN(r, genPaths, 2)) },
		"ports": ports, "not_ports": ports,
		"hosts": func() string { return quoted(pickN(r, genHosts, 2)) }, "not_hosts": func() string { return quoted(pickN(r, genHosts, 2)) },
	}
	nFrom, nTo, nWhen := r.IntN(3), r.IntN(3), r.IntN(3)
	if nFrom+nTo+nWhen == 0 {
		nFrom = 1
	}
	for range nFrom {
		fmt.Fprintf(&b, "    from { %s }\n", genAttrs(r, from))
	}
	for range nTo {
		fmt.Fprintf(&b, "    to { %s }\n", genAttrs(r, to))
	}
	for range nWhen {
		key := []string{"x-a", "x-b"}[r.IntN(2)]
		fmt.Fprintf(&b, "    when {\n      key = \"request.headers[%s]\"\n", key)
		switch r.IntN(5) {
		case 0:
			fmt.Fprintf(&b, "      values = %s\n", quoted(pickN(r, genValues, 2)))
		case 1:
			fmt.Fprintf(&b, "      not_values = %s\n", quoted(pickN(r, genValues, 2)))
		case 2:
			fmt.Fprintf(&b, "      regex = %q\n", genRegexes[r.IntN(len(genRegexes))])
		case 3:
			fmt.Fprintf(&b, "      present = %t\n", r.IntN(2) == 0)
		default:
			fmt.Fprintf(&b, "      values = %s\n      not_values = %s\n", quoted(pickN(r, genValues, 2)), quoted(pickN(r, genValues, 1)))
		}
		b.WriteString("    }\n")
	}
	b.WriteString("  }\n")
	return b.String()
}

func genRequest(r *rand.Rand) diffRequest {
	req := diffRequest{client: r.IntN(len(diffClients)), authority: r.IntN(len(diffAuthorities)),
		method: diffMethods[r.IntN(len(diffMethods))], headers: map[string]string{}}
	for _, k := range []string{"x-a", "x-b"} {
		if vs := diffHeaderValues[k]; r.IntN(len(vs)+1) < len(vs) {
			req.headers[k] = vs[r.IntN(len(vs))]
		}
	}
	return req
}

func TestPolicyDifferential(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BOWLINE_DIFF_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("BOWLINE_DIFF_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d (BOWLINE_DIFF_SEED=%d replays this run)", seed, seed)
	const policies, requests = 26, 20
	total := 0
	for i, defaultDeny := range []bool{false, true} {
		t.Run(fmt.Sprintf("default_deny=%t", defaultDeny), func(t *testing.T) {
			total += runDiffBatch(t, rand.New(rand.NewPCG(seed, uint64(i))), defaultDeny, policies, requests)
		})
	}
	if total < 1000 {
		t.Fatalf("only %d cases were decided", total)
	}
	t.Logf("%d (policy, request) cases, all decided alike three ways", total)
}

type diffServer struct {
	name  string
	port  int
	lis   net.Listener
	hcl   string
	ext   map[string]string
	conns map[[2]int]*grpc.ClientConn
}

func runDiffBatch(t *testing.T, r *rand.Rand, defaultDeny bool, n, perPolicy int) int {
	ctx := t.Context()
	ca, err := identity.New(ctx, identity.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("mesh.test")})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, c := range ca.Roots() {
		roots.AddCert(c)
	}

	// The policies: one destination service per policy, each an xDS-enabled
	// gRPC server on its own port.
	servers := make([]*diffServer, n)
	var authz, services strings.Builder
	for i := range servers {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lis.Close() })
		s := &diffServer{name: fmt.Sprintf("svc%d", i), lis: lis, port: lis.Addr().(*net.TCPAddr).Port, conns: map[[2]int]*grpc.ClientConn{}}
		var b strings.Builder
		fmt.Fprintf(&b, "authorization %q {\n", s.name)
		for range 1 + r.IntN(4) {
			b.WriteString(genRule(r, s.port))
		}
		b.WriteString("}\n")
		s.hcl = b.String()
		authz.WriteString(s.hcl)
		fmt.Fprintf(&services, "service %q {\n  protocol = \"grpc\"\n  endpoint {\n    address = \"127.0.0.1\"\n    port    = %d\n  }\n}\n", s.name, s.port)
		servers[i] = s
	}
	mesh := fmt.Sprintf(`mesh {
  trust_domain = "mesh.test"
  default_deny = %t
  enforce      = "both"
  policyd {
    address = "127.0.0.1:15020"
  }
}
identity {
  mtls = "strict"
}
service "frontend" {
  protocol = "grpc"
}
service "backend" {
  protocol = "grpc"
}
service "api" {
  namespace = "payments"
  protocol  = "grpc"
}
`, defaultDeny) + services.String()
	dir := t.TempDir()
	files := []config.File{{Name: filepath.Join(dir, "authz.hcl"), Content: []byte(authz.String())}, {Name: filepath.Join(dir, "mesh.hcl"), Content: []byte(mesh)}}
	for _, f := range files {
		if err := os.WriteFile(f.Name, f.Content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, diags := config.Parse(files)
	if diags.HasErrors() {
		t.Fatalf("generated configuration: %s\n%s", diags.Error(), authz.String())
	}
	snap := discovery.NewSnapshot(nil, file.Convert(cfg))

	// Judge 1: the evaluator. Judge 2: the ext_authz service over gRPC.
	eval := policy.NewEvaluator(cfg, snap)
	az := policyd.NewAuthz(slog.New(slog.DiscardHandler), nil)
	az.Update(cfg, snap)
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, az)
	alis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(alis) }()
	t.Cleanup(gs.Stop)
	aconn, err := grpc.NewClient(alis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aconn.Close() })
	authClient := authv3.NewAuthorizationClient(aconn)

	// The context extensions an Envoy sidecar of each destination sends
	// (its application on the server's port, its inbound on 21000).
	in := translate.Input{Catalog: snap, Config: cfg, TrustBundle: []byte("bundle")}
	for _, s := range servers {
		res, err := translate.Build(in, translate.Proxy{Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: "default", Name: s.name},
			InboundPort: 21000, LocalPort: uint32(s.port), TLS: &translate.ProxyTLS{CertChain: []byte("cert"), PrivateKey: []byte("key")}})
		if err != nil {
			t.Fatal(err)
		}
		if s.ext = extAuthzContext(t, res); s.ext == nil {
			t.Fatalf("%s: the sidecar has no ext_authz context extensions", s.name)
		}
	}

	// Judge 3: gRPC-Go's RBAC, configured by bowline server.
	srv, _ := meshtest.StartInProcess(t, controlplane.Options{ConfigDir: dir,
		Sources: func(_ *config.Config, store *config.Store, _ *slog.Logger) ([]discovery.Source, []config.FileSource, error) {
			return []discovery.Source{file.New(store)}, nil, nil
		}})
	var xs []*meshtest.XDSServer
	for _, s := range servers {
		certDir := t.TempDir()
		cert, err := ca.Issue(spiffeid.RequireFromString("spiffe://mesh.test/ns/default/svc/"+s.name), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{bootstrap.CAFile: ca.RootsPEM(), bootstrap.CertFile: cert.ChainPEM, bootstrap.KeyFile: cert.KeyPEM} {
			if err := os.WriteFile(filepath.Join(certDir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		b, err := bootstrap.GRPC(bootstrap.Options{Service: s.name, Namespace: "default", XDSAddr: srv.XDSAddr, NodeID: s.name + "-" + t.Name(), CertDir: certDir})
		if err != nil {
			t.Fatal(err)
		}
		xs = append(xs, meshtest.StartXDSServer(t, s.name, s.lis, b))
	}
	meshtest.Eventually(t, 60*time.Second, func() error {
		for i, x := range xs {
			if !x.Serving() {
				return fmt.Errorf("%s is not serving yet", servers[i].name)
			}
		}
		return nil
	})
	clientCerts := make([]tls.Certificate, len(diffClients))
	for i, id := range diffClients {
		c, err := ca.Issue(spiffeid.RequireFromString(id), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if clientCerts[i], err = tls.X509KeyPair(c.ChainPEM, c.KeyPEM); err != nil {
			t.Fatal(err)
		}
	}
	dial := func(s *diffServer, client, authority int) *grpc.ClientConn {
		k := [2]int{client, authority}
		if c, ok := s.conns[k]; ok {
			return c
		}
		tc := &tls.Config{
			Certificates: []tls.Certificate{clientCerts[client]},
			// The server's certificate carries a SPIFFE ID, not a host name:
			// verify its chain, not the name.
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				leaf, err := x509.ParseCertificate(raw[0])
				if err != nil {
					return err
				}
				_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
				return err
			},
		}
		c, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", s.port), grpc.WithTransportCredentials(credentials.NewTLS(tc)), grpc.WithAuthority(diffAuthorities[authority]))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s.conns[k] = c
		return c
	}

	var disagreements []string
	allowed, denied := 0, 0
	for _, s := range servers {
		for range perPolicy {
			req := genRequest(r)
			authority := diffAuthorities[req.authority]
			headers := map[string]string{":authority": authority, ":method": "POST", ":path": req.method, ":scheme": "https",
				"content-type": "application/grpc", "te": "trailers"}
			for k, v := range req.headers {
				headers[k] = v
			}
			// 1.
			d, _ := eval.Decide("default/"+s.name, "", &policy.Request{Principal: diffClients[req.client], Method: "POST",
				Path: req.method, Host: authority, Port: uint32(s.port), Headers: headers})
			// 2.
			resp, err := authClient.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
				Source:      &authv3.AttributeContext_Peer{Principal: diffClients[req.client], Address: socket("127.0.0.1", 40000)},
				Destination: &authv3.AttributeContext_Peer{Principal: "spiffe://mesh.test/ns/default/svc/" + s.name, Address: socket("127.0.0.1", 21000)},
				Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
					Method: "POST", Path: req.method, Host: authority, Scheme: "https", Protocol: "HTTP/2", Headers: headers,
				}},
				ContextExtensions: s.ext,
			}})
			if err != nil {
				t.Fatalf("ext_authz Check: %v", err)
			}
			extAllow := codes.Code(resp.GetStatus().GetCode()) == codes.OK
			// 3.
			rctx := metadata.NewOutgoingContext(ctx, metadata.New(req.headers))
			rctx, cancel := context.WithTimeout(rctx, 10*time.Second)
			err = dial(s, req.client, req.authority).Invoke(rctx, req.method, &testpb.Empty{}, &testpb.Empty{})
			cancel()
			var grpcAllow bool
			switch status.Code(err) {
			case codes.OK, codes.Unimplemented:
				grpcAllow = true
			case codes.PermissionDenied:
			default:
				t.Fatalf("%s: %s: %v", s.name, req, err)
			}
			if d.Allow {
				allowed++
			} else {
				denied++
			}
			if d.Allow != extAllow || d.Allow != grpcAllow {
				disagreements = append(disagreements, fmt.Sprintf("%s: %s\n  evaluator allow=%t (rule %s), ext_authz allow=%t, gRPC RBAC allow=%t\n%s",
					s.name, req, d.Allow, ruleName(d.Rule), extAllow, grpcAllow, s.hcl))
			}
		}
	}
	t.Logf("%d cases: %d allowed, %d denied, %d disagreements", n*perPolicy, allowed, denied, len(disagreements))
	if len(disagreements) > 0 {
		shown := disagreements[:min(len(disagreements), 10)]
		t.Fatalf("%d of %d cases disagree; the first:\n%s", len(disagreements), n*perPolicy, strings.Join(shown, "\n"))
	}
	if allowed == 0 || denied == 0 {
		t.Fatalf("degenerate run: %d allowed, %d denied", allowed, denied)
	}
	return n * perPolicy
}

func ruleName(r *policy.Rule) string {
	if r == nil {
		return "none"
	}
	return r.ID + " at " + r.Pos
}

func socket(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// extAuthzContext reads the context extensions of the ext_authz filter on a
// sidecar's inbound listener.
func extAuthzContext(t *testing.T, res *translate.Resources) map[string]string {
	t.Helper()
	for _, r := range res.Listeners {
		l := r.(*listener.Listener)
		if l.GetName() != "inbound" {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				m := &hcm.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(m); err != nil {
					continue
				}
				for _, vh := range m.GetRouteConfig().GetVirtualHosts() {
					a, ok := vh.GetTypedPerFilterConfig()["envoy.filters.http.ext_authz"]
					if !ok {
						continue
					}
					pr := &extauthzhttp.ExtAuthzPerRoute{}
					if err := a.UnmarshalTo(pr); err != nil {
						t.Fatal(err)
					}
					return pr.GetCheckSettings().GetContextExtensions()
				}
			}
		}
	}
	return nil
}
