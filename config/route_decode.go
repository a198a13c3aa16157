package config

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

var routeSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "namespace"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "rule"}},
}

func decodeRouteBlock(b *hcl.Block) (*Route, hcl.Diagnostics) {
	r := &Route{Service: ServiceRef{Namespace: "default", Name: b.Labels[0]}, DeclRange: b.DefRange}
	content, diags := b.Body.Content(routeSchema)
	diags = append(diags, checkName(b.Labels[0], b.LabelRanges[0], "service")...)
	diags = append(diags, decodeName(content.Attributes["namespace"], &r.Service.Namespace)...)
	for _, rb := range content.Blocks {
		rule, d := decodeRuleBlock(rb, r.Service)
		diags = append(diags, d...)
		r.Rules = append(r.Rules, rule)
	}
	if len(r.Rules) == 0 {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Route without rules",
			Detail: "A route needs at least one rule block.", Subject: b.DefRange.Ptr()})
	}
	// A catch-all rule decides every request: rules after it never apply.
	for i, rule := range r.Rules {
		if rule.Match.CatchAll() && i < len(r.Rules)-1 {
			next := r.Rules[i+1]
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unreachable rule",
				Detail:  fmt.Sprintf("The rule at %s matches every request, so this rule and the ones after it never apply. Put catch-all rules last.", rule.DeclRange),
				Subject: next.DeclRange.Ptr()})
			break
		}
	}
	return r, diags
}

var ruleSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "timeout"}},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "match"}, {Type: "destination"}, {Type: "split"}, {Type: "redirect"}, {Type: "rewrite"},
		{Type: "request_headers"}, {Type: "response_headers"}, {Type: "retries"}, {Type: "mirror"}, {Type: "fault"},
	},
}

func decodeRuleBlock(b *hcl.Block, svc ServiceRef) (*RouteRule, hcl.Diagnostics) {
	r := &RouteRule{DeclRange: b.DefRange}
	content, diags := b.Body.Content(ruleSchema)
	diags = append(diags, decodeDuration(content.Attributes["timeout"], &r.Timeout, time.Millisecond, 24*time.Hour)...)
	seen := map[string]hcl.Range{}
	once := func(blk *hcl.Block) bool {
		if prev, dup := seen[blk.Type]; dup {
			diags = append(diags, duplicateBlock(blk.Type, blk, prev))
			return false
		}
		seen[blk.Type] = blk.DefRange
		return true
	}
	for _, blk := range content.Blocks {
		var d hcl.Diagnostics
		switch blk.Type {
		case "match":
			if once(blk) {
				r.Match, d = decodeMatchBlock(blk)
			}
		case "destination":
			if once(blk) {
				var dest Destination
				dest, _, d = decodeDestination(blk, svc, false)
				r.Destination = &dest
			}
		case "split":
			dest, attrs, ds := decodeDestination(blk, svc, true)
			s := &Split{Destination: dest}
			d = append(ds, decodeUint(attrs["weight"], &s.Weight, 0, 100)...)
			r.Splits = append(r.Splits, s)
		case "redirect":
			if once(blk) {
				r.Redirect, d = decodeRedirectBlock(blk)
			}
		case "rewrite":
			if once(blk) {
				r.Rewrite, d = decodeRewriteBlock(blk)
			}
		case "request_headers":
			if once(blk) {
				r.RequestHeaders, d = decodeHeaderOpsBlock(blk)
			}
		case "response_headers":
			if once(blk) {
				r.ResponseHeaders, d = decodeHeaderOpsBlock(blk)
			}
		case "retries":
			if once(blk) {
				r.Retries, d = decodeRetriesBlock(blk)
			}
		case "mirror":
			if once(blk) {
				dest, attrs, ds := decodeDestination(blk, svc, true)
				m := &Mirror{Destination: dest}
				d = append(ds, decodePercent(attrs["percent"], &m.Percent)...)
				if attrs["percent"] == nil {
					m.Percent = 100
				}
				r.Mirror = m
			}
		case "fault":
			if once(blk) {
				r.Fault, d = decodeFaultBlock(blk)
			}
		}
		diags = append(diags, d...)
	}
	actions := 0
	for _, set := range []bool{r.Destination != nil, len(r.Splits) > 0, r.Redirect != nil} {
		if set {
			actions++
		}
	}
	switch {
	case actions == 0:
		r.Destination = &Destination{Service: svc, DeclRange: b.DefRange}
	case actions > 1:
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Conflicting actions",
			Detail: "A rule sends requests to one destination, splits them, or redirects them: choose one of destination, split and redirect.", Subject: b.DefRange.Ptr()})
	}
	if len(r.Splits) > 0 {
		var total uint32
		for _, s := range r.Splits {
			total += s.Weight
		}
		if total != 100 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Split weights do not add up to 100",
				Detail: fmt.Sprintf("The weights of this rule's split blocks add up to %d; they must add up to 100.", total), Subject: r.Splits[0].DeclRange.Ptr()})
		}
	}
	if r.Redirect != nil && (r.Rewrite != nil || r.Mirror != nil || r.Retries != nil || r.Fault != nil) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Redirect with forwarding options",
			Detail: "A redirect answers the request itself: rewrite, mirror, retries and fault do not apply.", Subject: b.DefRange.Ptr()})
	}
	return r, diags
}

var destinationSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "service"}, {Name: "subset"}, {Name: "weight"}, {Name: "percent"}},
}

// decodeDestination reads service and subset (weight and percent are read by
// the split and mirror callers).
func decodeDestination(b *hcl.Block, svc ServiceRef, allowExtra bool) (Destination, hcl.Attributes, hcl.Diagnostics) {
	d := Destination{Service: svc, DeclRange: b.DefRange}
	content, diags := b.Body.Content(destinationSchema)
	if !allowExtra {
		for _, n := range []string{"weight", "percent"} {
			if a, ok := content.Attributes[n]; ok {
				diags = append(diags, attrError(a, "Unsupported argument", fmt.Sprintf("%s is not allowed in a destination block.", n)))
			}
		}
	} else if b.Type == "split" {
		if a, ok := content.Attributes["percent"]; ok {
			diags = append(diags, attrError(a, "Unsupported argument", "a split block takes weight, not percent."))
		}
		if _, ok := content.Attributes["weight"]; !ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing weight", Detail: "A split block needs a weight.", Subject: b.DefRange.Ptr()})
		}
	} else if a, ok := content.Attributes["weight"]; ok {
		diags = append(diags, attrError(a, "Unsupported argument", "a mirror block takes percent, not weight."))
	}
	if a, ok := content.Attributes["service"]; ok {
		var s string
		ds := gohcl.DecodeExpression(a.Expr, nil, &s)
		diags = append(diags, ds...)
		if !ds.HasErrors() {
			if ns, name, found := strings.Cut(s, "/"); found {
				d.Service = ServiceRef{Namespace: ns, Name: name}
			} else {
				d.Service = ServiceRef{Namespace: svc.Namespace, Name: s}
			}
			if !nameRe.MatchString(d.Service.Name) || !nameRe.MatchString(d.Service.Namespace) {
				diags = append(diags, attrError(a, "Invalid service", fmt.Sprintf("%q is not \"name\" or \"namespace/name\".", s)))
			}
		}
	}
	if a, ok := content.Attributes["subset"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &d.Subset)...)
	}
	return d, content.Attributes, diags
}

var matchSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "methods"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "path"}, {Type: "header", LabelNames: []string{"name"}}, {Type: "query", LabelNames: []string{"name"}}},
}

var pathSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "exact"}, {Name: "prefix"}, {Name: "regex"}}}

var headerMatchSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "exact"}, {Name: "prefix"}, {Name: "regex"}, {Name: "present"}, {Name: "invert"}},
}

var methods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace}

func decodeMatchBlock(b *hcl.Block) (*RouteMatch, hcl.Diagnostics) {
	m := &RouteMatch{DeclRange: b.DefRange}
	content, diags := b.Body.Content(matchSchema)
	if a, ok := content.Attributes["methods"]; ok {
		d := gohcl.DecodeExpression(a.Expr, nil, &m.Methods)
		diags = append(diags, d...)
		for i, meth := range m.Methods {
			m.Methods[i] = strings.ToUpper(meth)
			if !slices.Contains(methods, m.Methods[i]) {
				diags = append(diags, attrError(a, "Invalid method", fmt.Sprintf("%q is not an HTTP method.", meth)))
			}
		}
	}
	pathSeen := false
	for _, blk := range content.Blocks {
		switch blk.Type {
		case "path":
			if pathSeen {
				diags = append(diags, duplicateBlock("path", blk, b.DefRange))
				continue
			}
			pathSeen = true
			pc, d := blk.Body.Content(pathSchema)
			diags = append(diags, d...)
			n := 0
			if a, ok := pc.Attributes["exact"]; ok {
				diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &m.PathExact)...)
				n++
			}
			if a, ok := pc.Attributes["prefix"]; ok {
				diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &m.PathPrefix)...)
				n++
			}
			if a, ok := pc.Attributes["regex"]; ok {
				diags = append(diags, decodeRegex(a, &m.PathRegex)...)
				n++
			}
			if n != 1 {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid path match",
					Detail: "A path block sets exactly one of exact, prefix or regex.", Subject: blk.DefRange.Ptr()})
			}
			for _, p := range []string{m.PathExact, m.PathPrefix} {
				if p != "" && !strings.HasPrefix(p, "/") {
					diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid path",
						Detail: fmt.Sprintf("%q can never match: request paths start with \"/\".", p), Subject: blk.DefRange.Ptr()})
				}
			}
		case "header":
			h := &HeaderMatch{Name: strings.ToLower(blk.Labels[0]), DeclRange: blk.DefRange}
			hc, d := blk.Body.Content(headerMatchSchema)
			diags = append(diags, d...)
			n := 0
			for name, dst := range map[string]*string{"exact": &h.Exact, "prefix": &h.Prefix} {
				if a, ok := hc.Attributes[name]; ok {
					diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, dst)...)
					n++
				}
			}
			if a, ok := hc.Attributes["regex"]; ok {
				diags = append(diags, decodeRegex(a, &h.Regex)...)
				n++
			}
			if a, ok := hc.Attributes["present"]; ok {
				diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &h.Present)...)
				if !h.Present {
					diags = append(diags, attrError(a, "Use invert", "To match a missing header write present = true with invert = true."))
				}
				n++
			}
			if a, ok := hc.Attributes["invert"]; ok {
				diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &h.Invert)...)
			}
			if n != 1 {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid header match",
					Detail: "A header block sets exactly one of exact, prefix, regex or present (invert = true negates it).", Subject: blk.DefRange.Ptr()})
			}
			m.Headers = append(m.Headers, h)
		case "query":
			q := &QueryMatch{Name: blk.Labels[0], DeclRange: blk.DefRange}
			qc, d := blk.Body.Content(headerMatchSchema)
			diags = append(diags, d...)
			n := 0
			if a, ok := qc.Attributes["exact"]; ok {
				diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &q.Exact)...)
				n++
			}
			if a, ok := qc.Attributes["regex"]; ok {
				diags = append(diags, decodeRegex(a, &q.Regex)...)
				n++
			}
			if a, ok := qc.Attributes["present"]; ok {
				diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &q.Present)...)
				n++
			}
			for _, bad := range []string{"prefix", "invert"} {
				if a, ok := qc.Attributes[bad]; ok {
					diags = append(diags, attrError(a, "Unsupported argument", fmt.Sprintf("query matches take exact, regex or present, not %s.", bad)))
				}
			}
			if n != 1 {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid query match",
					Detail: "A query block sets exactly one of exact, regex or present.", Subject: blk.DefRange.Ptr()})
			}
			m.Query = append(m.Query, q)
		}
	}
	return m, diags
}

var redirectSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "host"}, {Name: "path"}, {Name: "prefix"}, {Name: "code"}, {Name: "https"}},
}

func decodeRedirectBlock(b *hcl.Block) (*Redirect, hcl.Diagnostics) {
	r := &Redirect{Code: http.StatusMovedPermanently, DeclRange: b.DefRange}
	content, diags := b.Body.Content(redirectSchema)
	for name, dst := range map[string]*string{"host": &r.Host, "path": &r.Path, "prefix": &r.Prefix} {
		if a, ok := content.Attributes[name]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, dst)...)
		}
	}
	if a, ok := content.Attributes["https"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &r.HTTPS)...)
	}
	if a, ok := content.Attributes["code"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &r.Code)...)
		if !slices.Contains([]int{301, 302, 303, 307, 308}, r.Code) {
			diags = append(diags, attrError(a, "Invalid redirect code", fmt.Sprintf("%d is not a redirect status; use 301, 302, 303, 307 or 308.", r.Code)))
		}
	}
	if r.Path != "" && r.Prefix != "" {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid redirect", Detail: "Set path or prefix, not both.", Subject: b.DefRange.Ptr()})
	}
	if r.Host == "" && r.Path == "" && r.Prefix == "" && !r.HTTPS {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Empty redirect", Detail: "A redirect changes at least one of host, path, prefix or https.", Subject: b.DefRange.Ptr()})
	}
	return r, diags
}

var rewriteSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "prefix"}, {Name: "host"}}}

func decodeRewriteBlock(b *hcl.Block) (*Rewrite, hcl.Diagnostics) {
	r := &Rewrite{DeclRange: b.DefRange}
	content, diags := b.Body.Content(rewriteSchema)
	for name, dst := range map[string]*string{"prefix": &r.Prefix, "host": &r.Host} {
		if a, ok := content.Attributes[name]; ok {
			diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, dst)...)
		}
	}
	if r.Prefix == "" && r.Host == "" {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Empty rewrite", Detail: "A rewrite sets prefix, host or both.", Subject: b.DefRange.Ptr()})
	}
	return r, diags
}

var headerOpsSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "add"}, {Name: "set"}, {Name: "remove"}}}

func decodeHeaderOpsBlock(b *hcl.Block) (*HeaderOps, hcl.Diagnostics) {
	h := &HeaderOps{DeclRange: b.DefRange}
	content, diags := b.Body.Content(headerOpsSchema)
	diags = append(diags, decodeLabels(content.Attributes["add"], &h.Add)...)
	diags = append(diags, decodeLabels(content.Attributes["set"], &h.Set)...)
	if a, ok := content.Attributes["remove"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &h.Remove)...)
	}
	return h, diags
}

var faultSchema = &hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: "delay"}, {Type: "abort"}}}
var delaySchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "fixed", Required: true}, {Name: "percent", Required: true}}}
var abortSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "http_status"}, {Name: "grpc_status"}, {Name: "percent", Required: true}}}

// GRPCCodes are the gRPC status names a fault may abort with.
var GRPCCodes = []string{"CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
	"INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

func decodeFaultBlock(b *hcl.Block) (*Fault, hcl.Diagnostics) {
	f := &Fault{DeclRange: b.DefRange}
	content, diags := b.Body.Content(faultSchema)
	for _, blk := range content.Blocks {
		switch blk.Type {
		case "delay":
			if f.Delay != nil {
				diags = append(diags, duplicateBlock("delay", blk, f.Delay.DeclRange))
				continue
			}
			d := &FaultDelay{DeclRange: blk.DefRange}
			dc, ds := blk.Body.Content(delaySchema)
			diags = append(diags, ds...)
			diags = append(diags, decodeDuration(dc.Attributes["fixed"], &d.Fixed, time.Millisecond, time.Hour)...)
			diags = append(diags, decodePercent(dc.Attributes["percent"], &d.Percent)...)
			f.Delay = d
		case "abort":
			if f.Abort != nil {
				diags = append(diags, duplicateBlock("abort", blk, f.Abort.DeclRange))
				continue
			}
			a := &FaultAbort{DeclRange: blk.DefRange}
			ac, ds := blk.Body.Content(abortSchema)
			diags = append(diags, ds...)
			diags = append(diags, decodePercent(ac.Attributes["percent"], &a.Percent)...)
			_, hasHTTP := ac.Attributes["http_status"]
			_, hasGRPC := ac.Attributes["grpc_status"]
			if hasHTTP == hasGRPC {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid abort",
					Detail: "An abort sets exactly one of http_status and grpc_status.", Subject: blk.DefRange.Ptr()})
			}
			if at, ok := ac.Attributes["http_status"]; ok {
				var v uint32
				diags = append(diags, decodeUint(at, &v, 200, 599)...)
				a.HTTPStatus = int(v)
			}
			if at, ok := ac.Attributes["grpc_status"]; ok {
				ds := gohcl.DecodeExpression(at.Expr, nil, &a.GRPCStatus)
				diags = append(diags, ds...)
				a.GRPCStatus = strings.ToUpper(a.GRPCStatus)
				if !ds.HasErrors() && !slices.Contains(GRPCCodes, a.GRPCStatus) {
					diags = append(diags, attrError(at, "Invalid gRPC status", fmt.Sprintf("%q is not a gRPC status name; use one of %s.", a.GRPCStatus, strings.Join(GRPCCodes, ", "))))
				}
			}
			f.Abort = a
		}
	}
	if f.Delay == nil && f.Abort == nil {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Empty fault", Detail: "A fault block has a delay block, an abort block or both.", Subject: b.DefRange.Ptr()})
	}
	return f, diags
}
