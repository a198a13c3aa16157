package telemetry

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/config"
)

// The audit log: one JSON object per line for every authorization denial,
// from policyd's own ext_authz decisions (Record, called by the authz
// service) and from the RBAC filters of the sidecars (seen in their access
// logs); for every request a dry-run rule would have denied; and for
// allowed requests when the rule that allowed them says audit = true.

// Decisions of audit records.
const (
	DecisionDeny       = "deny"
	DecisionDryRunDeny = "dry_run_deny"
	DecisionAllow      = "allow"
)

// Origins of audit records: who decided.
const (
	OriginPolicyd = "policyd" // policyd's ext_authz
	OriginProxy   = "proxy"   // a sidecar's RBAC filter, from its access log
)

// RuleNone names the decision of no rule: a destination that requires an
// allow rule, and none matched.
const RuleNone = "none"

// AuditRecord is one line of the audit log.
type AuditRecord struct {
	Time            time.Time `json:"time"`
	Decision        string    `json:"decision"`
	Origin          string    `json:"origin"`
	SourcePrincipal string    `json:"source_principal"`
	// Source is the caller's service ("namespace/name") when known.
	Source string `json:"source,omitempty"`
	// Destination is the service asked ("namespace/name").
	Destination string `json:"destination"`
	Method      string `json:"method,omitempty"`
	Path        string `json:"path,omitempty"`
	// Rule is the deciding rule's ID ("namespace/service/index"), or
	// RuleNone; RuleAt is where it is declared ("file:line").
	Rule   string `json:"rule"`
	RuleAt string `json:"rule_at,omitempty"`
	// Reporter is the node ID of the proxy that reported (origin proxy).
	Reporter string `json:"reporter,omitempty"`
}

// Auditor is what policyd's ext_authz service calls for its own
// decisions: Record for denials and dry-run denials, and for allowed
// requests whose rule AuditsAllow.
type Auditor interface {
	Record(AuditRecord)
	AuditsAllow(ruleID string) bool
}

var _ Auditor = (*AuditLog)(nil)

// ruleInfo is what the audit log knows about a rule.
type ruleInfo struct {
	at     string
	dryRun bool
	audit  bool
}

// AuditLog writes audit records as JSON lines and keeps the most recent
// ones for the dashboard. Record never blocks: records that find the
// queue full are counted (Dropped) and left out.
type AuditLog struct {
	w       io.Writer
	queue   chan AuditRecord
	dropped atomic.Uint64
	written atomic.Uint64
	rules   atomic.Pointer[map[string]ruleInfo]
	now     func() time.Time

	mu     sync.Mutex
	recent []AuditRecord // ring
	next   int
	full   bool
}

const (
	auditQueue  = 16384
	auditRecent = 100
)

// NewAuditLog writes to w (nil: records are only kept for the dashboard).
func NewAuditLog(w io.Writer) *AuditLog {
	a := &AuditLog{w: w, queue: make(chan AuditRecord, auditQueue), recent: make([]AuditRecord, auditRecent), now: time.Now}
	empty := map[string]ruleInfo{}
	a.rules.Store(&empty)
	return a
}

// update indexes the rules of a configuration: where each is declared,
// whether it is a dry-run rule and whether allowed requests are audited.
func (a *AuditLog) update(cfg *config.Config) {
	m := map[string]ruleInfo{}
	if cfg != nil && cfg.Authz != nil {
		for _, blocks := range cfg.Authz.Services {
			for _, b := range blocks {
				for _, r := range b.Rules {
					m[r.ID] = ruleInfo{at: position(r.DeclRange.Filename, r.DeclRange.Start.Line), dryRun: r.DryRun, audit: ruleAudits(r)}
				}
			}
		}
	}
	a.rules.Store(&m)
}

func position(file string, line int) string {
	if file == "" {
		return ""
	}
	return file + ":" + codeString(uint32(line))
}

func (a *AuditLog) rule(id string) (ruleInfo, bool) {
	r, ok := (*a.rules.Load())[id]
	return r, ok
}

// AuditsAllow reports whether requests allowed by the rule are audited.
func (a *AuditLog) AuditsAllow(ruleID string) bool {
	if a == nil {
		return false
	}
	r, ok := a.rule(ruleID)
	return ok && r.audit
}

// Record queues a record. Its time is set when zero, and its rule's
// position when empty and known.
func (a *AuditLog) Record(r AuditRecord) {
	if a == nil {
		return
	}
	if r.Time.IsZero() {
		r.Time = a.now()
	}
	r.Time = r.Time.UTC()
	if r.Source == "" && r.SourcePrincipal != "" && r.SourcePrincipal != Unknown {
		if ns, svc := (&attributor{}).principalWorkload(r.SourcePrincipal); svc != Unknown {
			r.Source = ns + "/" + svc
		}
	}
	if r.RuleAt == "" && r.Rule != "" {
		if info, ok := a.rule(r.Rule); ok {
			r.RuleAt = info.at
		}
	}
	a.mu.Lock()
	a.recent[a.next] = r
	a.next = (a.next + 1) % len(a.recent)
	a.full = a.full || a.next == 0
	a.mu.Unlock()
	if a.w == nil {
		return
	}
	select {
	case a.queue <- r:
	default:
		a.dropped.Add(1)
	}
}

// Recent returns the most recent records, newest first.
func (a *AuditLog) Recent(n int) []AuditRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	size := a.next
	if a.full {
		size = len(a.recent)
	}
	n = min(n, size)
	out := make([]AuditRecord, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, a.recent[(a.next-i+len(a.recent))%len(a.recent)])
	}
	return out
}

// Dropped is the number of records left out of the file because its
// writer could not keep up.
func (a *AuditLog) Dropped() uint64 { return a.dropped.Load() }

// Written is the number of records written.
func (a *AuditLog) Written() uint64 { return a.written.Load() }

// Run writes queued records until ctx is done, flushing whenever the queue
// is empty, then writes what is left.
func (a *AuditLog) Run(ctx context.Context) error {
	if a.w == nil {
		<-ctx.Done()
		return nil
	}
	bw := bufio.NewWriterSize(a.w, 64*1024)
	enc := json.NewEncoder(bw)
	write := func(r AuditRecord) {
		if err := enc.Encode(r); err == nil {
			a.written.Add(1)
		}
	}
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case r := <-a.queue:
					write(r)
				default:
					return bw.Flush()
				}
			}
		case r := <-a.queue:
			write(r)
			if len(a.queue) == 0 {
				if err := bw.Flush(); err != nil {
					return err
				}
			}
		}
	}
}

// Flush waits, at most until ctx is done, for the queued records to be
// handed to the writer (tests).
func (a *AuditLog) Flush(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for len(a.queue) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// RBAC dynamic metadata (Envoy's RBAC filters write it under their filter
// name, each key prefixed with the filter's rules_stat_prefix or
// shadow_rules_stat_prefix; xds/translate names them "deny_", "allow_" and
// "deny_dry_run_", "allow_dry_run_").
const (
	rbacHTTPMeta       = "envoy.filters.http.rbac"
	rbacNetworkMeta    = "envoy.filters.network.rbac"
	enforcedResult     = "enforced_engine_result"
	enforcedPolicy     = "enforced_effective_policy_id"
	shadowResult       = "shadow_engine_result"
	shadowPolicy       = "shadow_effective_policy_id"
	engineDenied       = "denied"
	engineAllowed      = "allowed"
	rbacDeniedPrefix   = "rbac_access_denied_matched_policy["
	extAuthzDeniedCode = "ext_authz_denied"
)

// rbacOutcome is what a destination report says about the sidecar's RBAC.
type rbacOutcome struct {
	denied       bool
	deniedRule   string
	dryDenied    bool
	dryRule      string
	allowedRule  string
	deniedByAuth bool // policyd's ext_authz denied (policyd audits it)
}

// rbacOf reads the RBAC outcome of a report: the response code details of
// an HTTP denial, and the RBAC filters' dynamic metadata.
func rbacOf(r *report) rbacOutcome {
	var o rbacOutcome
	if rule, ok := strings.CutPrefix(r.codeDetail, rbacDeniedPrefix); ok {
		o.denied = true
		o.deniedRule = strings.TrimSuffix(rule, "]")
	}
	if strings.HasPrefix(r.codeDetail, extAuthzDeniedCode) {
		o.deniedByAuth = true
	}
	fm := r.metadata.GetFilterMetadata()
	for _, ns := range [...]string{rbacHTTPMeta, rbacNetworkMeta} {
		s, ok := fm[ns]
		if !ok {
			continue
		}
		fields := s.GetFields()
		for k, v := range fields {
			val := str(v)
			switch {
			case strings.HasSuffix(k, enforcedResult):
				id := str(fields[strings.TrimSuffix(k, enforcedResult)+enforcedPolicy])
				if val == engineDenied && !o.denied {
					o.denied, o.deniedRule = true, id
				} else if val == engineAllowed && id != "" {
					o.allowedRule = id
				}
			case strings.HasSuffix(k, shadowResult) && val == engineDenied:
				id := str(fields[strings.TrimSuffix(k, shadowResult)+shadowPolicy])
				// Prefer the deny filter's verdict (a rule that matched) to the
				// allow filter's (no rule matched).
				if !o.dryDenied || (o.dryRule == "" && id != "") {
					o.dryDenied, o.dryRule = true, id
				}
			}
		}
	}
	if o.denied && o.deniedRule == "" {
		o.deniedRule = RuleNone
	}
	if (o.denied && o.deniedRule == RuleNone) || o.deniedRule == "none" {
		o.deniedRule = RuleNone
	}
	return o
}

func str(v *structpb.Value) string {
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		return s.StringValue
	}
	return ""
}

// auditReport records what a destination report says about RBAC.
func (a *AuditLog) auditReport(r *report) {
	if !r.inbound || (r.metadata == nil && r.codeDetail == "") {
		return
	}
	o := rbacOf(r)
	rec := func(decision, rule string) AuditRecord {
		src := ""
		if r.src.Service != Unknown {
			src = r.src.Namespace + "/" + r.src.Service
		}
		return AuditRecord{Decision: decision, Origin: OriginProxy, SourcePrincipal: r.labels[lSrcPrincipal], Source: src,
			Destination: r.dst.Namespace + "/" + r.dst.Service, Method: r.method, Path: r.path, Rule: rule, Reporter: r.reporterID}
	}
	switch {
	case o.denied:
		a.Record(rec(DecisionDeny, o.deniedRule))
	case o.dryDenied && !o.deniedByAuth:
		rule := o.dryRule
		if rule == "" {
			rule = RuleNone
		}
		a.Record(rec(DecisionDryRunDeny, rule))
	case o.allowedRule != "" && a.AuditsAllow(o.allowedRule) && !o.deniedByAuth:
		a.Record(rec(DecisionAllow, o.allowedRule))
	}
}

// ruleAudits reports whether a rule asks for its allowed requests to be
// audited (audit = true).
func ruleAudits(r *config.AuthzRule) bool { return r.Audit && r.Action == config.AuthzAllow }
