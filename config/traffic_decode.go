package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// The decoders of the traffic blocks: service_defaults, subset, route.

var serviceDefaultsSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "namespace"}, {Name: "protocol"}, {Name: "connect_timeout"}, {Name: "request_timeout"}, {Name: "locality_failover"},
	},
	Blocks: []hcl.BlockHeaderSchema{{Type: "retries"}, {Type: "load_balancer"}, {Type: "circuit_breaker"}, {Type: "outlier_detection"}},
}

func decodeServiceDefaultsBlock(b *hcl.Block) (*ServiceDefaults, hcl.Diagnostics) {
	d := &ServiceDefaults{Service: ServiceRef{Namespace: "default", Name: b.Labels[0]}, DeclRange: b.DefRange}
	content, diags := b.Body.Content(serviceDefaultsSchema)
	diags = append(diags, checkName(b.Labels[0], b.LabelRanges[0], "service")...)
	diags = append(diags, decodeName(content.Attributes["namespace"], &d.Service.Namespace)...)
	if a, ok := content.Attributes["protocol"]; ok {
		diags = append(diags, decodeEnum(a, &d.Protocol, "http", "http2", "grpc", "tcp")...)
	}
	diags = append(diags, decodeDuration(content.Attributes["connect_timeout"], &d.ConnectTimeout, time.Millisecond, time.Hour)...)
	diags = append(diags, decodeDuration(content.Attributes["request_timeout"], &d.RequestTimeout, time.Millisecond, 24*time.Hour)...)
	if a, ok := content.Attributes["locality_failover"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &d.LocalityFailover)...)
	}
	for _, blk := range content.Blocks {
		var ds hcl.Diagnostics
		switch blk.Type {
		case "retries":
			if d.Retries != nil {
				ds = hcl.Diagnostics{duplicateBlock("retries", blk, d.Retries.DeclRange)}
				break
			}
			d.Retries, ds = decodeRetriesBlock(blk)
		case "load_balancer":
			if d.LoadBalancer != nil {
				ds = hcl.Diagnostics{duplicateBlock("load_balancer", blk, d.LoadBalancer.DeclRange)}
				break
			}
			d.LoadBalancer, ds = decodeLoadBalancerBlock(blk)
		case "circuit_breaker":
			if d.CircuitBreaker != nil {
				ds = hcl.Diagnostics{duplicateBlock("circuit_breaker", blk, d.CircuitBreaker.DeclRange)}
				break
			}
			d.CircuitBreaker, ds = decodeCircuitBreakerBlock(blk)
		case "outlier_detection":
			if d.Outlier != nil {
				ds = hcl.Diagnostics{duplicateBlock("outlier_detection", blk, d.Outlier.DeclRange)}
				break
			}
			d.Outlier, ds = decodeOutlierBlock(blk)
		}
		diags = append(diags, ds...)
	}
	return d, diags
}

var retriesSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "attempts", Required: true}, {Name: "per_try_timeout"}, {Name: "retry_on"}},
}

// RetryConditions are the retry_on values Bowline accepts: Envoy's HTTP
// conditions and the gRPC status names that Envoy and proxyless gRPC share.
var RetryConditions = []string{
	"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "retriable-status-codes",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

// GRPCRetryConditions are the retry_on values proxyless gRPC honours.
var GRPCRetryConditions = []string{"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}

func decodeRetriesBlock(b *hcl.Block) (*RetryPolicy, hcl.Diagnostics) {
	r := &RetryPolicy{DeclRange: b.DefRange, RetryOn: []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "resource-exhausted", "5xx"}}
	content, diags := b.Body.Content(retriesSchema)
	diags = append(diags, decodeUint(content.Attributes["attempts"], &r.Attempts, 1, 10)...)
	diags = append(diags, decodeDuration(content.Attributes["per_try_timeout"], &r.PerTryTimeout, time.Millisecond, time.Hour)...)
	if a, ok := content.Attributes["retry_on"]; ok {
		var on []string
		d := gohcl.DecodeExpression(a.Expr, nil, &on)
		diags = append(diags, d...)
		if !d.HasErrors() {
			if len(on) == 0 {
				diags = append(diags, attrError(a, "Empty retry_on", "retry_on needs at least one condition, for example [\"5xx\", \"unavailable\"]."))
			}
			for _, c := range on {
				if !slices.Contains(RetryConditions, c) {
					diags = append(diags, attrError(a, "Invalid retry condition", fmt.Sprintf("%q is not a retry condition; use %s.", c, strings.Join(quoteAll(RetryConditions), ", "))))
				}
			}
			r.RetryOn = on
		}
	}
	return r, diags
}

var loadBalancerSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "policy", Required: true}, {Name: "min_ring_size"}, {Name: "max_ring_size"}, {Name: "choice_count"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "hash"}},
}

var hashSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "header"}, {Name: "cookie"}, {Name: "cookie_ttl"}, {Name: "source_ip"}},
}

func decodeLoadBalancerBlock(b *hcl.Block) (*LoadBalancer, hcl.Diagnostics) {
	lb := &LoadBalancer{DeclRange: b.DefRange}
	content, diags := b.Body.Content(loadBalancerSchema)
	if a, ok := content.Attributes["policy"]; ok {
		diags = append(diags, decodeEnum(a, &lb.Policy, "round_robin", "least_request", "random", "ring_hash", "maglev")...)
	}
	var minRing, maxRing uint32
	diags = append(diags, decodeUint(content.Attributes["min_ring_size"], &minRing, 1, 8<<20)...)
	diags = append(diags, decodeUint(content.Attributes["max_ring_size"], &maxRing, 1, 8<<20)...)
	lb.MinRingSize, lb.MaxRingSize = uint64(minRing), uint64(maxRing)
	diags = append(diags, decodeUint(content.Attributes["choice_count"], &lb.ChoiceCount, 2, 100)...)
	if minRing != 0 && maxRing != 0 && minRing > maxRing {
		diags = append(diags, attrError(content.Attributes["min_ring_size"], "Invalid ring size", "min_ring_size is larger than max_ring_size."))
	}
	for _, hb := range content.Blocks {
		h := HashKey{DeclRange: hb.DefRange}
		hc, d := hb.Body.Content(hashSchema)
		diags = append(diags, d...)
		set := 0
		if a, ok := hc.Attributes["header"]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &h.Header)...)
			set++
		}
		if a, ok := hc.Attributes["cookie"]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &h.Cookie)...)
			set++
		}
		diags = append(diags, decodeDuration(hc.Attributes["cookie_ttl"], &h.CookieTTL, time.Second, 365*24*time.Hour)...)
		if a, ok := hc.Attributes["source_ip"]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &h.SourceIP)...)
			if h.SourceIP {
				set++
			}
		}
		if set != 1 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid hash key",
				Detail: "A hash block sets exactly one of header, cookie or source_ip = true.", Subject: hb.DefRange.Ptr()})
		}
		lb.Hash = append(lb.Hash, h)
	}
	if len(lb.Hash) > 0 && lb.Policy != "ring_hash" && lb.Policy != "maglev" {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Hash keys need a hashing policy",
			Detail: fmt.Sprintf("hash blocks only apply with policy \"ring_hash\" or \"maglev\", not %q.", lb.Policy), Subject: content.Blocks[0].DefRange.Ptr()})
	}
	return lb, diags
}

var circuitBreakerSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "max_connections"}, {Name: "max_pending_requests"}, {Name: "max_requests"}, {Name: "max_retries"}},
}

func decodeCircuitBreakerBlock(b *hcl.Block) (*CircuitBreaker, hcl.Diagnostics) {
	cb := &CircuitBreaker{DeclRange: b.DefRange}
	content, diags := b.Body.Content(circuitBreakerSchema)
	for name, dst := range map[string]**uint32{
		"max_connections": &cb.MaxConnections, "max_pending_requests": &cb.MaxPendingRequests,
		"max_requests": &cb.MaxRequests, "max_retries": &cb.MaxRetries,
	} {
		diags = append(diags, decodeOptUint(content.Attributes[name], dst, 1, 1<<30)...)
	}
	return cb, diags
}

var outlierSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "consecutive_5xx"}, {Name: "consecutive_gateway_errors"}, {Name: "failure_percentage"}, {Name: "min_requests"},
		{Name: "interval"}, {Name: "base_ejection_time"}, {Name: "max_ejection_percent"},
	},
}

func decodeOutlierBlock(b *hcl.Block) (*OutlierDetection, hcl.Diagnostics) {
	o := &OutlierDetection{DeclRange: b.DefRange, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second}
	content, diags := b.Body.Content(outlierSchema)
	diags = append(diags, decodeOptUint(content.Attributes["consecutive_5xx"], &o.Consecutive5xx, 1, 1000)...)
	diags = append(diags, decodeOptUint(content.Attributes["consecutive_gateway_errors"], &o.ConsecutiveGatewayErrors, 1, 1000)...)
	diags = append(diags, decodeOptUint(content.Attributes["failure_percentage"], &o.FailurePercentage, 1, 100)...)
	diags = append(diags, decodeUint(content.Attributes["min_requests"], &o.MinRequests, 1, 1<<20)...)
	diags = append(diags, decodeDuration(content.Attributes["interval"], &o.Interval, 10*time.Millisecond, time.Hour)...)
	diags = append(diags, decodeDuration(content.Attributes["base_ejection_time"], &o.BaseEjectionTime, 10*time.Millisecond, time.Hour)...)
	diags = append(diags, decodeOptUint(content.Attributes["max_ejection_percent"], &o.MaxEjectionPercent, 1, 100)...)
	if o.Consecutive5xx == nil && o.ConsecutiveGatewayErrors == nil && o.FailurePercentage == nil {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Outlier detection without a trigger",
			Detail: "Set consecutive_5xx, consecutive_gateway_errors or failure_percentage.", Subject: b.DefRange.Ptr()})
	}
	return o, diags
}

var subsetSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "namespace"}, {Name: "labels", Required: true}},
}

func decodeSubsetBlock(b *hcl.Block) (*Subset, hcl.Diagnostics) {
	s := &Subset{Service: ServiceRef{Namespace: "default", Name: b.Labels[0]}, Name: b.Labels[1], DeclRange: b.DefRange}
	content, diags := b.Body.Content(subsetSchema)
	diags = append(diags, checkName(b.Labels[0], b.LabelRanges[0], "service")...)
	diags = append(diags, checkName(b.Labels[1], b.LabelRanges[1], "subset")...)
	diags = append(diags, decodeName(content.Attributes["namespace"], &s.Service.Namespace)...)
	diags = append(diags, decodeLabels(content.Attributes["labels"], &s.Labels)...)
	if a, ok := content.Attributes["labels"]; ok && len(s.Labels) == 0 && !diags.HasErrors() {
		diags = append(diags, attrError(a, "Empty subset", "A subset selects endpoints by labels; give at least one, for example { version = \"v2\" }."))
	}
	return s, diags
}

func checkName(name string, rng hcl.Range, what string) hcl.Diagnostics {
	if nameRe.MatchString(name) {
		return nil
	}
	return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid " + what + " name",
		Detail: fmt.Sprintf("%q is not a valid %s name: use letters, digits, '-', '_' and '.'.", name, what), Subject: rng.Ptr()}}
}

// decodeDuration reads a duration string ("250ms", "1s", "2m") within [lo, hi].
func decodeDuration(a *hcl.Attribute, dst *time.Duration, lo, hi time.Duration) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	var s string
	diags := gohcl.DecodeExpression(a.Expr, nil, &s)
	if diags.HasErrors() {
		return diags
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return append(diags, attrError(a, "Invalid duration", fmt.Sprintf("%q is not a duration; write it like \"250ms\", \"1s\" or \"2m\".", s)))
	}
	if d < lo || d > hi {
		return append(diags, attrError(a, "Duration out of range", fmt.Sprintf("%s must be from %s to %s, not %s.", a.Name, lo, hi, d)))
	}
	*dst = d
	return diags
}

func decodeUint(a *hcl.Attribute, dst *uint32, lo, hi int64) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	var v int64
	diags := gohcl.DecodeExpression(a.Expr, nil, &v)
	if diags.HasErrors() {
		return diags
	}
	if v < lo || v > hi {
		return append(diags, attrError(a, "Value out of range", fmt.Sprintf("%s must be a whole number from %d to %d, not %d.", a.Name, lo, hi, v)))
	}
	*dst = uint32(v)
	return diags
}

func decodeOptUint(a *hcl.Attribute, dst **uint32, lo, hi int64) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	var v uint32
	diags := decodeUint(a, &v, lo, hi)
	if !diags.HasErrors() {
		*dst = &v
	}
	return diags
}

// decodePercent reads a percentage in (0, 100].
func decodePercent(a *hcl.Attribute, dst *float64) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	var v float64
	diags := gohcl.DecodeExpression(a.Expr, nil, &v)
	if diags.HasErrors() {
		return diags
	}
	if v <= 0 || v > 100 {
		return append(diags, attrError(a, "Percentage out of range", fmt.Sprintf("%s must be more than 0 and at most 100, not %g.", a.Name, v)))
	}
	*dst = v
	return diags
}

func decodeRegex(a *hcl.Attribute, dst *string) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	diags := gohcl.DecodeExpression(a.Expr, nil, dst)
	if diags.HasErrors() {
		return diags
	}
	// Envoy and gRPC use RE2; Go's regexp is RE2 as well.
	if _, err := regexp.Compile(*dst); err != nil {
		return append(diags, attrError(a, "Invalid regular expression", fmt.Sprintf("%q: %v.", *dst, err)))
	}
	return diags
}
