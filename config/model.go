// Package config loads Bowline's HCL configuration: mesh settings, services
// declared by hand (the file registry), registry connections and, as the mesh
// grows, traffic and policy rules.
//
// Files come from one or more FileSources (a directory, Consul KV). Each file
// is decoded on its own into typed structs that keep their hcl.Range; every
// problem is an hcl.Diagnostic naming file, line and column. A file that fails
// is rejected whole and its last valid version keeps serving, so a typo never
// takes configuration away from the mesh.
package config

import (
	"github.com/hashicorp/hcl/v2"
)

// Config is one valid, complete configuration. Never modify a published one.
type Config struct {
	// Version is a content hash of the accepted files.
	Version string
	// RulesVersion is a content hash of the accepted files that declare
	// more than services: it changes only when something besides the file
	// registry's services does, which the file registry brings to the
	// catalog (and so to the proxies it concerns) on its own.
	RulesVersion string
	Mesh         Mesh
	Services     []*ServiceDecl
	Consul       *ConsulDecl
	Nomad        *NomadDecl
	// Kubernetes enables the Kubernetes adapter.
	Kubernetes *KubernetesDecl
	// Traffic holds the traffic rules (service_defaults, subset, route).
	Traffic *Traffic
	// Identity configures the CA, mutual TLS and join tokens (identity.go).
	Identity *IdentityDecl
	// Authz holds the authorization rules (authz_model.go).
	Authz *Authz
	// Telemetry configures access logs, metrics and tracing (telemetry.go);
	// nil means the defaults (TelemetrySettings).
	Telemetry *TelemetryDecl
	// RateLimits holds the rate_limit blocks (ratelimit_model.go).
	RateLimits *RateLimits
	// Warnings are diagnostics that did not stop the configuration.
	Warnings hcl.Diagnostics
	// Status describes which files are in force and which were rejected.
	Status Status
}

// DefaultTrustDomain is used when the mesh block sets none.
const DefaultTrustDomain = "bowline.local"

// Mesh holds mesh-wide settings (the `mesh` block).
type Mesh struct {
	TrustDomain string
	// DefaultDeny denies requests to a service that no allow rule admits,
	// also when the service has no rules (authz_model.go).
	DefaultDeny bool
	// Enforce is the mesh-wide enforcement point ("" = DefaultEnforce).
	Enforce Enforce
	// Policyd is where sidecars reach bowline policyd (nil: nowhere).
	Policyd   *PolicydDecl
	DeclRange hcl.Range
}

// ServiceDecl is a service declared in HCL (the `service` block), served by
// the built-in file registry.
type ServiceDecl struct {
	Name      string
	Namespace string
	Protocol  string
	Labels    map[string]string
	Endpoints []*EndpointDecl
	Upstreams []*UpstreamDecl
	DeclRange hcl.Range
}

// EndpointDecl is one `endpoint` block of a service.
type EndpointDecl struct {
	Address     string
	Port        uint32
	Labels      map[string]string
	Health      string
	SidecarPort uint32
	Region      string
	Zone        string
	Weight      uint32
	DeclRange   hcl.Range
}

// UpstreamDecl is one `upstream` block: a service the workload calls through
// its sidecar on a local port.
type UpstreamDecl struct {
	Name      string
	Namespace string
	LocalPort uint32
	DeclRange hcl.Range
}

// ConsulDecl is the `consul` block that enables the Consul adapter.
type ConsulDecl struct {
	Address    string
	Token      string
	Datacenter string
	// KVPrefix, when set, makes Consul KV a configuration source.
	KVPrefix string
	// MaxConns bounds the requests open to Consul at once (adapters/consul
	// Config.MaxConns): 0 is the adapter's default, -1 no bound.
	MaxConns int
	// Intentions makes Consul's intentions a source of authorization rules
	// (adapters/consul IntentionsSource, docs/policy.md).
	Intentions bool
	DeclRange  hcl.Range
}
