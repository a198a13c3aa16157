package policyd

import (
	"github.com/bowlinemesh/bowline/policy"
	"github.com/bowlinemesh/bowline/policy/telemetry"
)

// Auditor receives policyd's own authorization decisions for the audit log
// (telemetry.AuditLog implements it): every denial, every request a
// dry-run rule would have denied, and allowed requests whose rule says
// audit = true.
type Auditor interface {
	Record(telemetry.AuditRecord)
	AuditsAllow(ruleID string) bool
}

var _ Auditor = (*telemetry.AuditLog)(nil)

// audit records one decision of Check.
func (a *Authz) audit(en *policy.Entry, r *policy.Request, d *policy.Decision) {
	if a.auditor == nil {
		return
	}
	rec := func(decision string, rule *policy.Rule) telemetry.AuditRecord {
		out := telemetry.AuditRecord{Decision: decision, Origin: telemetry.OriginPolicyd, SourcePrincipal: r.Principal,
			Destination: en.Service.String(), Method: r.Method, Path: r.Path, Rule: telemetry.RuleNone}
		if out.SourcePrincipal == "" {
			out.SourcePrincipal = telemetry.Unknown
		}
		if rule != nil {
			out.Rule, out.RuleAt = rule.ID, rule.Pos
		}
		return out
	}
	switch {
	case !d.Allow:
		a.auditor.Record(rec(telemetry.DecisionDeny, d.Rule))
	case d.DryRun && !d.DryAllow:
		a.auditor.Record(rec(telemetry.DecisionDryRunDeny, d.DryRule))
	case d.Rule != nil && a.auditor.AuditsAllow(d.Rule.ID):
		a.auditor.Record(rec(telemetry.DecisionAllow, d.Rule))
	}
}
