// Package attest holds the attestors that check a workload's claim against
// the platform that runs it, besides the join tokens of package identity:
//
//   - Consul: the claim's token is a Consul ACL token that may register the
//     claimed service (service:write), as Consul itself decides;
//   - Nomad: the token is a Nomad workload identity (a JWT signed by the
//     cluster's keyring, verified against the agent's JWKS) of an
//     allocation that declares the claimed service, or of that service;
//   - Kubernetes: the token is a service account token that the API server
//     accepts (TokenReview); it proves the service account's identity.
//
// Each implements identity.Attestor. An unproven claim's error wraps
// identity.ErrUnproven (identity.ErrMismatch for a valid proof of another
// identity); any other error means the attestor could not decide (its
// backend failed). An attestor only sends a platform the tokens that look
// like its own (a UUID for Consul, a JWT with Kubernetes claims for the API
// server), so that a workload's secret does not travel to other systems.
// Attestors are built from the server's configuration in cmd/bowline and
// read at startup.
package attest
