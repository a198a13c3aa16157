package config

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
)

// assembleRateLimits gathers the rate_limit blocks of every file (frags in
// order: a duplicate is blamed on the later block) and runs the checks that
// need the whole configuration. As for authorization, whatever depends on
// what a registry may still report is a warning.
// declared holds the services declared in files, by name.
func assembleRateLimits(cfg *Config, frags []*fragment, declared map[ServiceRef]*ServiceDecl) hcl.Diagnostics {
	var diags hcl.Diagnostics
	rls := &RateLimits{Services: map[ServiceRef]*RateLimit{}}
	for _, fr := range frags {
		for _, rl := range fr.rlimits {
			if prev, dup := rls.Services[rl.Service]; dup {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate rate_limit",
					Detail: fmt.Sprintf("The rate limits of %s are already declared at %s; put all of them in one rate_limit block.", rl.Service, prev.DeclRange), Subject: rl.DeclRange.Ptr()})
				continue
			}
			rls.Services[rl.Service] = rl
		}
	}
	cfg.RateLimits = rls

	external := cfg.Consul != nil || cfg.Nomad != nil || cfg.Kubernetes != nil
	protocol := func(ref ServiceRef) string {
		if cfg.Traffic != nil {
			if d, ok := cfg.Traffic.Defaults[ref]; ok && d.Protocol != "" {
				return d.Protocol
			}
		}
		if s, ok := declared[ref]; ok {
			return s.Protocol
		}
		return ""
	}
	warn := func(rng hcl.Range, summary, detail string) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: summary, Detail: detail, Subject: rng.Ptr()})
	}
	for _, ref := range rls.Refs() {
		rl := rls.Services[ref]
		if _, ok := declared[ref]; !ok && !external {
			warn(rl.DeclRange, "Unknown service", fmt.Sprintf("No service block declares %s and no registry (consul, nomad, kubernetes) is configured: these limits apply to nothing until it exists.", ref))
		}
		switch protocol(ref) {
		case "tcp":
			warn(rl.DeclRange, "Not enforced for a TCP service", fmt.Sprintf("%s is a TCP service: rate limits count HTTP requests, so its sidecars enforce none of these limits.", ref))
		case "grpc":
			if rl.Local != nil {
				warn(rl.Local.DeclRange, "Not enforced by proxyless gRPC", fmt.Sprintf("%s is a gRPC service: xDS-enabled gRPC servers have no local rate limit filter, so only the instances behind an Envoy sidecar enforce this local limit.", ref))
			}
			for _, g := range rl.Global {
				warn(g.DeclRange, "Not enforced by proxyless gRPC", fmt.Sprintf("%s is a gRPC service: xDS-enabled gRPC servers do not call a rate limit service, so only the instances behind an Envoy sidecar enforce this global limit.", ref))
			}
		}
		if len(rl.Global) > 0 && cfg.Mesh.Policyd == nil {
			warn(rl.Global[0].DeclRange, "No policyd configured", fmt.Sprintf("%s has global limits but the mesh block has no policyd block: they are counted by policyd, so nothing enforces them until one is configured.", ref))
		}
		for _, g := range rl.Global {
			if g.usesSource() && cfg.MTLSModeFor(ref.Namespace, ref.Name) == MTLSDisabled {
				warn(g.DeclRange, "Caller identity unknown", fmt.Sprintf("%s has mutual TLS disabled: the caller's identity (source.service, source.principal) comes from its certificate, so no request is counted by this limit.", ref))
			}
		}
	}
	return diags
}
