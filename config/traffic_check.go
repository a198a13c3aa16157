package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// assembleTraffic gathers the traffic blocks of every file and runs the
// checks that need all of them: duplicates, subsets that do not exist,
// services nobody declares, features proxyless gRPC cannot honour.
// declared holds the services declared in files, by name.
func assembleTraffic(cfg *Config, frags []*fragment, declared map[ServiceRef]*ServiceDecl) hcl.Diagnostics {
	var diags hcl.Diagnostics
	t := &Traffic{Defaults: map[ServiceRef]*ServiceDefaults{}, Subsets: map[ServiceRef][]*Subset{}, Routes: map[ServiceRef]*Route{}}
	for _, fr := range frags {
		for _, d := range fr.defaults {
			if prev, dup := t.Defaults[d.Service]; dup {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate service_defaults",
					Detail: fmt.Sprintf("Defaults for %s are already declared at %s.", d.Service, prev.DeclRange), Subject: d.DeclRange.Ptr()})
				continue
			}
			t.Defaults[d.Service] = d
		}
		for _, s := range fr.subsets {
			if prev, dup := t.Subset(s.Service, s.Name); dup {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate subset",
					Detail: fmt.Sprintf("Subset %q of %s is already declared at %s.", s.Name, s.Service, prev.DeclRange), Subject: s.DeclRange.Ptr()})
				continue
			}
			t.Subsets[s.Service] = append(t.Subsets[s.Service], s)
		}
		for _, r := range fr.routes {
			if prev, dup := t.Routes[r.Service]; dup {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate route",
					Detail: fmt.Sprintf("The route for %s is already declared at %s; put all its rules in one route block.", r.Service, prev.DeclRange), Subject: r.DeclRange.Ptr()})
				continue
			}
			t.Routes[r.Service] = r
		}
	}
	for svc, subs := range t.Subsets {
		slices.SortFunc(subs, func(a, b *Subset) int {
			if a.Name < b.Name {
				return -1
			}
			if a.Name > b.Name {
				return 1
			}
			return 0
		})
		t.Subsets[svc] = subs
	}
	cfg.Traffic = t

	// Services declared in files; with an external registry any name may exist.
	external := cfg.Consul != nil || cfg.Nomad != nil || cfg.Kubernetes != nil
	checkService := func(ref ServiceRef, rng hcl.Range) {
		if _, ok := declared[ref]; !ok && !external {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Unknown service",
				Detail: fmt.Sprintf("No service block declares %s and no registry (consul, nomad, kubernetes) is configured: this has no effect until the service exists.", ref), Subject: rng.Ptr()})
		}
	}
	protocol := func(ref ServiceRef) string {
		if d, ok := t.Defaults[ref]; ok && d.Protocol != "" {
			return d.Protocol
		}
		if s, ok := declared[ref]; ok {
			return s.Protocol
		}
		return ""
	}
	grpcWarn := func(ref ServiceRef, rng hcl.Range, feature string) {
		if protocol(ref) == "grpc" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Not supported by proxyless gRPC",
				Detail: fmt.Sprintf("%s is a gRPC service; proxyless gRPC clients ignore %s (Envoy sidecars apply it).", ref, feature), Subject: rng.Ptr()})
		}
	}
	// checkDest checks where a destination, split or mirror sends requests:
	// another service than the route's must exist (the route's own is
	// checked once, at the route block), and so must the subset.
	checkDest := func(route ServiceRef, d Destination) {
		if d.Service != route {
			checkService(d.Service, d.DeclRange)
		}
		if d.Subset == "" {
			return
		}
		if _, ok := t.Subset(d.Service, d.Subset); !ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unknown subset",
				Detail: fmt.Sprintf("%s has no subset %q; declare it with a subset %q %q block.", d.Service, d.Subset, d.Service.Name, d.Subset), Subject: d.DeclRange.Ptr()})
		}
	}

	for _, ref := range sortedRefs(t.Defaults) {
		d := t.Defaults[ref]
		checkService(ref, d.DeclRange)
		if lb := d.LoadBalancer; lb != nil {
			switch lb.Policy {
			case "random", "maglev":
				grpcWarn(ref, lb.DeclRange, fmt.Sprintf("load balancing policy %q (they use round_robin, or ring_hash for maglev)", lb.Policy))
			}
			for _, h := range lb.Hash {
				if h.Cookie != "" || h.SourceIP {
					grpcWarn(ref, h.DeclRange, "cookie and source IP hash keys (only header keys)")
				}
			}
		}
		if r := d.Retries; r != nil && r.PerTryTimeout > 0 {
			grpcWarn(ref, r.DeclRange, "per_try_timeout")
		}
		if o := d.Outlier; o != nil && o.FailurePercentage == nil {
			grpcWarn(ref, o.DeclRange, "consecutive-error outlier detection (set failure_percentage for them)")
		}
		if d.ConnectTimeout > 0 {
			grpcWarn(ref, d.DeclRange, "connect_timeout")
		}
		if cb := d.CircuitBreaker; cb != nil {
			var limits []string
			for _, l := range []struct {
				name string
				set  bool
			}{
				{"max_connections", cb.MaxConnections != nil},
				{"max_pending_requests", cb.MaxPendingRequests != nil},
				{"max_retries", cb.MaxRetries != nil},
			} {
				if l.set {
					limits = append(limits, l.name)
				}
			}
			if len(limits) > 0 {
				grpcWarn(ref, cb.DeclRange, fmt.Sprintf("circuit breaker %s (only max_requests)", strings.Join(limits, ", ")))
			}
		}
	}
	for _, ref := range sortedRefs(t.Subsets) {
		for _, s := range t.Subsets[ref] {
			checkService(ref, s.DeclRange)
		}
	}
	for _, ref := range sortedRefs(t.Routes) {
		r := t.Routes[ref]
		checkService(ref, r.DeclRange)
		for _, rule := range r.Rules {
			if rule.Destination != nil {
				checkDest(ref, *rule.Destination)
			}
			for _, s := range rule.Splits {
				checkDest(ref, s.Destination)
			}
			if rule.Mirror != nil {
				checkDest(ref, rule.Mirror.Destination)
				grpcWarn(ref, rule.Mirror.DeclRange, "mirror")
			}
			if rule.Redirect != nil {
				grpcWarn(ref, rule.Redirect.DeclRange, "redirect (matching calls fail)")
			}
			if rule.Rewrite != nil {
				grpcWarn(ref, rule.Rewrite.DeclRange, "rewrite")
			}
			for _, h := range []*HeaderOps{rule.RequestHeaders, rule.ResponseHeaders} {
				if h != nil {
					grpcWarn(ref, h.DeclRange, "header changes")
				}
			}
			if rule.Match != nil && len(rule.Match.Query) > 0 {
				grpcWarn(ref, rule.Match.DeclRange, "query parameter matches (they skip the whole rule)")
			}
			if rule.Retries != nil && rule.Retries.PerTryTimeout > 0 {
				grpcWarn(ref, rule.Retries.DeclRange, "per_try_timeout")
			}
		}
	}
	return diags
}

func sortedRefs[V any](m map[ServiceRef]V) []ServiceRef {
	out := make([]ServiceRef, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b ServiceRef) int {
		if a.Namespace != b.Namespace {
			if a.Namespace < b.Namespace {
				return -1
			}
			return 1
		}
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}
