package config

import (
	"fmt"
	"slices"

	"github.com/hashicorp/hcl/v2"
)

// assembleAuthz gathers the authorization blocks of every file (frags in
// order: a conflict is blamed on the later block) and runs the checks that
// need the whole configuration. Only a contradiction is an error; whatever
// depends on what a registry may still report (unknown services, protocols)
// is a warning, so that no file is rejected, and no rule dropped, because
// another file changed.
// declared holds the services declared in files, by name.
func assembleAuthz(cfg *Config, frags []*fragment, declared map[ServiceRef]*ServiceDecl) hcl.Diagnostics {
	var diags hcl.Diagnostics
	az := &Authz{Services: map[ServiceRef][]*Authorization{}, JWT: map[ServiceRef][]*JWTDecl{}}
	for _, fr := range frags {
		for _, j := range fr.jwt {
			nj := *j // fragments are shared with published configurations
			nj.ID = fmt.Sprintf("%s/%d", j.Service, len(az.JWT[j.Service]))
			az.JWT[j.Service] = append(az.JWT[j.Service], &nj)
		}
		for _, a := range fr.authz {
			for _, prev := range az.Services[a.Service] {
				if prev.Enforce != "" && a.Enforce != "" && prev.Enforce != a.Enforce {
					diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Conflicting enforce",
						Detail:  fmt.Sprintf("%s is enforced in %q at %s; a service has one enforcement point.", a.Service, prev.Enforce, prev.EnforceRange),
						Subject: a.EnforceRange.Ptr()})
				}
			}
			az.Services[a.Service] = append(az.Services[a.Service], a)
		}
	}
	// Number the rules. Fragments are shared with configurations already
	// published, so the blocks and rules are copied, not changed.
	for ref, blocks := range az.Services {
		i := 0
		for j, b := range blocks {
			nb := *b
			nb.Rules = make([]*AuthzRule, len(b.Rules))
			for k, r := range b.Rules {
				nr := *r
				nr.ID = fmt.Sprintf("%s/%d", ref, i)
				nb.Rules[k] = &nr
				i++
			}
			blocks[j] = &nb
		}
	}
	cfg.Authz = az

	external := cfg.Consul != nil || cfg.Nomad != nil || cfg.Kubernetes != nil
	known := func(ref ServiceRef) bool {
		_, ok := declared[ref]
		return ok || external
	}
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
	if p := cfg.Mesh.Policyd; p != nil && p.Service != nil && !known(*p.Service) {
		warn(p.DeclRange, "Unknown service", fmt.Sprintf("No service block declares %s and no registry is configured: sidecars that ask policyd will find no endpoint, and deny.", p.Service))
	}
	for _, ref := range sortedRefs(az.Services) {
		enforce := cfg.EnforceFor(ref)
		proto := protocol(ref)
		for _, b := range az.Services[ref] {
			if !known(ref) {
				warn(b.DeclRange, "Unknown service", fmt.Sprintf("No service block declares %s and no registry (consul, nomad, kubernetes) is configured: these rules apply to nothing until it exists.", ref))
			}
			if b.Enforce.InPolicyd() && cfg.Mesh.Policyd == nil {
				warn(b.EnforceRange, "No policyd configured", fmt.Sprintf("%s asks for enforce = %q but the mesh block has no policyd block: its proxies enforce the rules themselves (RBAC) until one is configured.", ref, b.Enforce))
			}
			for _, r := range b.Rules {
				for _, f := range r.From {
					for _, s := range append(slices.Clone(f.Services), f.NotServices...) {
						if !known(s) {
							warn(f.DeclRange, "Unknown service", fmt.Sprintf("No service block declares %s and no registry is configured: its principal is %s.", s, "spiffe://"+cfg.Mesh.TrustDomain+"/ns/"+s.Namespace+"/svc/"+s.Name))
						}
					}
				}
				checkRuleForProtocol(r, ref, proto, enforce, warn)
				for _, c := range r.When {
					if c.Kind == ConditionClaim && len(az.JWT[ref]) == 0 {
						warn(c.DeclRange, "No jwt block", fmt.Sprintf("%s has no jwt block, so its requests carry no verified claims: %s never holds.", ref, c.Key))
					}
				}
			}
		}
	}
	for _, ref := range sortedRefs(az.JWT) {
		for _, j := range az.JWT[ref] {
			if !known(ref) {
				warn(j.DeclRange, "Unknown service", fmt.Sprintf("No service block declares %s and no registry is configured: this jwt block applies to nothing until it exists.", ref))
			}
		}
	}
	if cfg.Mesh.Enforce.InPolicyd() && cfg.Mesh.Policyd == nil {
		warn(cfg.Mesh.DeclRange, "No policyd configured", fmt.Sprintf("The mesh asks for enforce = %q but has no policyd block: proxies enforce the rules themselves (RBAC) until one is configured.", cfg.Mesh.Enforce))
	}
	return diags
}

// checkRuleForProtocol warns about conditions the destination's proxies
// cannot evaluate: HTTP attributes of a TCP service, JWT claims on a gRPC
// service (proxyless gRPC servers have no JWT filter), methods other than
// POST for gRPC.
func checkRuleForProtocol(r *AuthzRule, ref ServiceRef, proto string, enforce Enforce, warn func(hcl.Range, string, string)) {
	const ignored = "An allow rule that needs it never matches, and a deny rule applies without it (docs/policy.md, \"Conditions a proxy cannot evaluate\")."
	switch proto {
	case "tcp":
		for _, o := range r.To {
			if o.HTTPOnly() {
				warn(o.DeclRange, "Not evaluable for a TCP service", fmt.Sprintf("%s is a TCP service: methods, paths and hosts do not exist for it. %s", ref, ignored))
			}
		}
		for _, c := range r.When {
			warn(c.DeclRange, "Not evaluable for a TCP service", fmt.Sprintf("%s is a TCP service: %s does not exist for it. %s", ref, c.Key, ignored))
		}
	case "grpc":
		for _, o := range r.To {
			for _, m := range o.Methods {
				if m != "POST" && m != "*" {
					warn(o.DeclRange, "Pattern can never match", fmt.Sprintf("%s is a gRPC service: every gRPC request is a POST, so method %q never matches.", ref, m))
				}
			}
		}
		for _, c := range r.When {
			if c.Kind == ConditionClaim && enforce.InProxy() {
				warn(c.DeclRange, "Not evaluable by proxyless gRPC", fmt.Sprintf("%s is a gRPC service: xDS-enabled gRPC servers cannot read JWT claims (Envoy sidecars and policyd can). %s", ref, ignored))
			}
		}
	}
}
