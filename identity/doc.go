// Package identity is the mesh's certificate authority (Istio's Citadel): it
// keeps the CA (a root generated on first start and persisted through a
// Store, or a root or intermediate supplied by the operator), names workloads
// with SPIFFE IDs, signs short-lived X.509-SVIDs (24 hours by default,
// reissued at half-life), keeps the trust bundle, which may hold several
// roots so that the root can be rotated without an outage, and decides with
// pluggable Attestors whether a workload has proven the identity it claims
// before it receives that identity's certificate (join tokens here; the
// platforms' attestors in package identity/attest). It also issues the xDS
// server's own TLS certificate (ServerCertificate).
//
// Certificates reach workloads in two ways: Envoy sidecars receive theirs
// (key included) over SDS on their ADS stream (Authority.Certificate, used by
// xds/server), and proxyless gRPC workloads keep their key and send a CSR to
// the signing service on the xDS port (RegisterSignService, RequestSign),
// which `bowline bootstrap grpc --cert-dir` calls.
package identity
