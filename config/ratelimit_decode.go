package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// The decoder of the rate_limit block (docs/policy.md, "Rate limits").

var rateLimitSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "namespace"}, {Name: "on_error"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "global"}, {Type: "local"}},
}

var globalLimitSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "requests", Required: true}, {Name: "per", Required: true}, {Name: "by"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "match"}},
}

var localLimitSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "requests", Required: true}, {Name: "per", Required: true}},
}

// Bounds of a limit's period.
const (
	minRatePeriod = time.Second
	maxRatePeriod = 24 * time.Hour
)

func decodeRateLimitBlock(b *hcl.Block) (*RateLimit, hcl.Diagnostics) {
	rl := &RateLimit{Service: ServiceRef{Namespace: "default", Name: b.Labels[0]}, OnError: DefaultOnError, DeclRange: b.DefRange}
	content, diags := b.Body.Content(rateLimitSchema)
	diags = append(diags, checkName(b.Labels[0], b.LabelRanges[0], "service")...)
	diags = append(diags, decodeName(content.Attributes["namespace"], &rl.Service.Namespace)...)
	if a, ok := content.Attributes["on_error"]; ok {
		var v string
		diags = append(diags, decodeEnum(a, &v, string(OnErrorAllow), string(OnErrorDeny))...)
		if v != "" {
			rl.OnError = OnError(v)
		}
		rl.OnErrorRange = a.Expr.Range()
	}
	for _, blk := range content.Blocks {
		switch blk.Type {
		case "global":
			g, d := decodeGlobalLimitBlock(blk)
			diags = append(diags, d...)
			g.ID = fmt.Sprintf("%s/%d", rl.Service, len(rl.Global))
			rl.Global = append(rl.Global, g)
		case "local":
			l, d := decodeLocalLimitBlock(blk)
			diags = append(diags, d...)
			if rl.Local != nil {
				diags = append(diags, duplicateBlock("local", blk, rl.Local.DeclRange))
				continue
			}
			rl.Local = l
		}
	}
	if len(rl.Global) == 0 && rl.Local == nil {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Rate limit without limits",
			Detail: "A rate_limit block needs at least one global block (counted by policyd) or a local block (enforced by each sidecar).", Subject: b.DefRange.Ptr()})
	}
	diags = append(diags, checkDistinguishable(rl.Global)...)
	return rl, diags
}

// checkDistinguishable refuses global limits that policyd could not tell
// apart. policyd learns only the descriptor entries (destination, then the
// by values), so limits with the same by list produce the same descriptor.
// Limits that apply to every request are always all present and are told
// apart by count; of those with the same by list, at most one may have a
// match (policyd then knows it applied when one more descriptor arrives).
func checkDistinguishable(limits []*GlobalLimit) hcl.Diagnostics {
	var diags hcl.Diagnostics
	matched := map[string]*GlobalLimit{}
	for _, g := range limits {
		if !g.Matched() {
			continue
		}
		shape := strings.Join(g.DescriptorKeys(), "\x00")
		if prev, ok := matched[shape]; ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Indistinguishable global limits",
				Detail: fmt.Sprintf("The global limit at %s also has a match and counts by the same attributes (%s). "+
					"The proxy sends policyd only the destination and the by values, so policyd could not tell which of the two a request matched. "+
					"Give one of them a different by list, or merge them.", prev.DeclRange, byList(g.By)),
				Subject: g.DeclRange.Ptr()})
			continue
		}
		matched[shape] = g
	}
	return diags
}

func byList(keys []RateLimitKey) string {
	if len(keys) == 0 {
		return "no by list"
	}
	s := make([]string, len(keys))
	for i, k := range keys {
		s[i] = k.String()
	}
	return "by = [" + strings.Join(s, ", ") + "]"
}

func decodeGlobalLimitBlock(b *hcl.Block) (*GlobalLimit, hcl.Diagnostics) {
	g := &GlobalLimit{DeclRange: b.DefRange}
	content, diags := b.Body.Content(globalLimitSchema)
	diags = append(diags, decodeRequests(content.Attributes["requests"], &g.Requests)...)
	diags = append(diags, decodeRatePeriod(content.Attributes["per"], &g.Per)...)
	if a, ok := content.Attributes["by"]; ok {
		var by []string
		d := gohcl.DecodeExpression(a.Expr, nil, &by)
		diags = append(diags, d...)
		if !d.HasErrors() {
			if len(by) == 0 {
				diags = append(diags, attrError(a, "Empty list", "An empty by counts every request in one counter, as no by does; leave the attribute out instead."))
			}
			seen := map[RateLimitKey]bool{}
			for _, s := range by {
				k, why := parseRateLimitKey(s)
				if why != "" {
					diags = append(diags, attrError(a, "Unknown attribute", fmt.Sprintf("%q in by: %s", s, why)))
					continue
				}
				if seen[k] {
					diags = append(diags, attrError(a, "Duplicate attribute", fmt.Sprintf("%s appears twice in by.", k)))
					continue
				}
				seen[k] = true
				g.By = append(g.By, k)
			}
		}
	}
	for _, mb := range content.Blocks {
		if g.Match != nil {
			diags = append(diags, duplicateBlock("match", mb, g.Match.DeclRange))
			continue
		}
		m, d := decodeMatchBlock(mb) // route_decode.go: the same matches as route rules
		diags = append(diags, d...)
		for _, q := range m.Query {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Query matches are not supported here",
				Detail: "A rate limit's match takes paths, methods and headers; query parameters cannot be matched.", Subject: q.DeclRange.Ptr()})
		}
		g.Match = m
	}
	return g, diags
}

func decodeLocalLimitBlock(b *hcl.Block) (*LocalLimit, hcl.Diagnostics) {
	l := &LocalLimit{DeclRange: b.DefRange}
	content, diags := b.Body.Content(localLimitSchema)
	diags = append(diags, decodeRequests(content.Attributes["requests"], &l.Requests)...)
	diags = append(diags, decodeRatePeriod(content.Attributes["per"], &l.Per)...)
	return l, diags
}

func decodeRequests(a *hcl.Attribute, dst *uint32) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	var v float64
	diags := gohcl.DecodeExpression(a.Expr, nil, &v)
	if diags.HasErrors() {
		return diags
	}
	switch {
	case v <= 0:
		return append(diags, attrError(a, "Invalid rate", fmt.Sprintf("requests = %g admits nothing: a limit admits at least 1 request per period (to refuse every request, use an authorization rule).", v)))
	case v != math.Trunc(v):
		return append(diags, attrError(a, "Invalid rate", fmt.Sprintf("requests = %g: requests is a whole number.", v)))
	case v > math.MaxUint32:
		return append(diags, attrError(a, "Invalid rate", fmt.Sprintf("requests = %g: at most %d requests per period.", v, uint32(math.MaxUint32))))
	}
	*dst = uint32(v)
	return diags
}

// ratePeriodRe reads "s", "m", "h" and "<n>s", "<n>m", "<n>h".
var ratePeriodRe = regexp.MustCompile(`^([0-9]*)(s|m|h)$`)

func decodeRatePeriod(a *hcl.Attribute, dst *time.Duration) hcl.Diagnostics {
	if a == nil {
		return nil
	}
	var s string
	diags := gohcl.DecodeExpression(a.Expr, nil, &s)
	if diags.HasErrors() {
		return diags
	}
	m := ratePeriodRe.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return append(diags, attrError(a, "Invalid period", fmt.Sprintf("%q is not a period; write \"s\", \"m\" or \"h\" (one second, minute or hour) or a whole number of them: \"10s\", \"5m\", \"1h\".", s)))
	}
	n := int64(1)
	if m[1] != "" {
		var err error
		if n, err = strconv.ParseInt(m[1], 10, 64); err != nil || n > int64(maxRatePeriod/time.Second) {
			n = math.MaxInt64 / int64(time.Hour)
		}
	}
	unit := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[m[2]]
	d := time.Duration(n) * unit
	if d < minRatePeriod || d > maxRatePeriod {
		return append(diags, attrError(a, "Invalid period", fmt.Sprintf("%q: a period is from 1s to 24h.", s)))
	}
	*dst = d
	return diags
}

// rateLimitHeaderRe reads request.headers["name"] and request.headers[name].
var (
	rateLimitHeaderRe = regexp.MustCompile(`^request\.headers\[(?:"([^"\[\]]+)"|([^"\[\]]+))\]$`)
	rlHeaderNameRe    = regexp.MustCompile(`^:?[a-z0-9!#$%&'*+.^_|~-]+$`)
)

// parseRateLimitKey reads a by attribute, or says why it is not one.
func parseRateLimitKey(s string) (RateLimitKey, string) {
	switch RateLimitKeyKind(s) {
	case KeySourceService, KeySourcePrincipal, KeyPath:
		return RateLimitKey{Kind: RateLimitKeyKind(s)}, ""
	}
	m := rateLimitHeaderRe.FindStringSubmatch(s)
	if m == nil {
		return RateLimitKey{}, `rate limits count by source.service, source.principal, request.path or request.headers["<name>"].`
	}
	name := strings.ToLower(m[1] + m[2])
	if name == "host" {
		name = ":authority"
	}
	if !rlHeaderNameRe.MatchString(name) {
		return RateLimitKey{}, fmt.Sprintf("%q is not a header name.", m[1]+m[2])
	}
	if name == ":path" {
		return RateLimitKey{}, "use request.path to count by path (the query string is left out)."
	}
	return RateLimitKey{Kind: KeyHeader, Header: name}, ""
}
