package policyd

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/policy"
)

// The context extensions a sidecar's checks carry (xds/translate sets them).
const (
	ExtDestination = "destination"
	ExtPort        = "port"
)

// DenyBody is the body of a denied HTTP request: it names nothing about the
// rules (the same words as Envoy's RBAC filter).
const DenyBody = "RBAC: access denied"

// Labels of decisions made by no rule.
const (
	ruleDefault = "default" // no allow rule required, or none matched
	ruleUnknown = "unknown" // the destination could not be told
	ruleJWT     = "jwt"     // no valid end-user token (401)
	resultAllow = "allow"
	resultDeny  = "deny"
)

// Responses are shared: gRPC only reads them.
var (
	okResponse = &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
	}
	missingJWTResponse = unauthenticated(policy.ErrJWTMissing.Error())
	invalidJWTResponse = unauthenticated(policy.ErrJWTInvalid.Error())
	deniedResponse     = &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied), Message: DenyBody},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
			Body:   DenyBody,
			Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "content-type", Value: "text/plain"},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}},
		}},
	}
)

// unauthenticated is a 401 (UNAUTHENTICATED for gRPC callers).
func unauthenticated(body string) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.Unauthenticated), Message: body},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized},
			Body:   body,
			Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "www-authenticate", Value: `Bearer realm="bowline"`},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}},
		}},
	}
}

// Authz is the ext_authz v3 Authorization service.
type Authz struct {
	authv3.UnimplementedAuthorizationServer
	log     *slog.Logger
	current atomic.Pointer[state]

	decisions *prometheus.CounterVec
	dryRuns   *prometheus.CounterVec
	latency   prometheus.Histogram
	rules     prometheus.Gauge
	updates   prometheus.Counter
	// counters for decisions made by no rule: [allow, deny].
	byDefault  [2]prometheus.Counter
	dryDefault [2]prometheus.Counter
	unknown    prometheus.Counter
	jwtDenied  prometheus.Counter
	keys       *keyFetcher
	auditor    Auditor // the audit log (audit.go); nil: none
}

var _ authv3.AuthorizationServer = (*Authz)(nil)

// NewAuthz returns the service, with its metrics registered on reg (nil:
// not registered). It denies everything until Update gives it rules.
func NewAuthz(log *slog.Logger, reg prometheus.Registerer) *Authz {
	a := &Authz{
		log: log,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bowline_policyd_decisions_total",
			Help: "Authorization checks decided, by result (allow, deny) and deciding rule (its ID, \"default\" when no rule decided, \"unknown\" when the destination could not be told).",
		}, []string{"result", "rule"}),
		dryRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bowline_policyd_dry_run_decisions_total",
			Help: "What destinations with dry-run rules would have decided with those rules enforced, by result and deciding rule.",
		}, []string{"result", "rule"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bowline_policyd_check_duration_seconds",
			Help:    "Time to decide one ext_authz check, in policyd.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025},
		}),
		rules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bowline_policyd_rules", Help: "Authorization rules in force (dry-run ones included).",
		}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bowline_policyd_rule_updates_total", Help: "Times the rules in force were rebuilt (configuration or catalog changes).",
		}),
	}
	a.byDefault = [2]prometheus.Counter{a.decisions.WithLabelValues(resultAllow, ruleDefault), a.decisions.WithLabelValues(resultDeny, ruleDefault)}
	a.dryDefault = [2]prometheus.Counter{a.dryRuns.WithLabelValues(resultAllow, ruleDefault), a.dryRuns.WithLabelValues(resultDeny, ruleDefault)}
	a.unknown = a.decisions.WithLabelValues(resultDeny, ruleUnknown)
	a.jwtDenied = a.decisions.WithLabelValues(resultDeny, ruleJWT)
	a.keys = newKeyFetcher(nil)
	if reg != nil {
		reg.MustRegister(a.decisions, a.dryRuns, a.latency, a.rules, a.updates)
	}
	return a
}

// Update builds the evaluator of a configuration and a catalog and puts it
// in force.
func (a *Authz) Update(cfg *config.Config, snap *discovery.Snapshot) {
	st := &state{cfg: cfg, eval: policy.NewEvaluator(cfg, snap),
		counters: map[*policy.Rule]*[2]prometheus.Counter{}, dry: map[*policy.Rule]*[2]prometheus.Counter{},
		jwt: map[string]*policy.JWTVerifier{}}
	if cfg.Authz != nil {
		for ref, decls := range cfg.Authz.JWT {
			v, err := policy.NewJWTVerifier(decls, a.keys)
			if err != nil {
				a.log.Error("jwt: key set unusable; requests to the service are refused", "service", ref.String(), "err", err)
				v = &policy.JWTVerifier{} // verifies nothing: every request is a 401
			}
			st.jwt[ref.String()] = v
		}
	}
	n := 0
	for _, en := range st.eval.Entries() {
		for _, r := range en.Destination.Rules {
			n++
			st.counters[r] = &[2]prometheus.Counter{a.decisions.WithLabelValues(resultAllow, r.ID), a.decisions.WithLabelValues(resultDeny, r.ID)}
		}
		rs := en.Ruleset
		for _, r := range append(append(append(append([]*policy.Rule{}, rs.Deny...), rs.Allow...), rs.DryDeny...), rs.DryAllow...) {
			if _, ok := st.dry[r]; !ok {
				st.dry[r] = &[2]prometheus.Counter{a.dryRuns.WithLabelValues(resultAllow, r.ID), a.dryRuns.WithLabelValues(resultDeny, r.ID)}
			}
			if _, ok := st.counters[r]; !ok { // a rule rewritten for its target
				st.counters[r] = &[2]prometheus.Counter{a.decisions.WithLabelValues(resultAllow, r.ID), a.decisions.WithLabelValues(resultDeny, r.ID)}
			}
		}
	}
	prev := a.current.Swap(st)
	a.rules.Set(float64(n))
	a.updates.Inc()
	level := slog.LevelInfo
	if prev != nil && prev.cfg.Version == cfg.Version {
		level = slog.LevelDebug // a catalog change: the same rules, principals re-resolved
	}
	a.log.Log(context.Background(), level, "rules in force", "config", cfg.Version, "destinations", len(st.eval.Entries()), "rules", n)
}

// Current returns the state in force (nil before the first Update).
func (a *Authz) Current() *state { return a.current.Load() }

// Check implements ext_authz: it decides the request the way the
// destination's RBAC would. The destination is the check's "destination"
// context extension, else the destination principal's SPIFFE ID; the port
// is the "port" context extension, else the destination address's port
// (mapped from a sidecar's port to its application's). A denial is HTTP 403
// (PERMISSION_DENIED for gRPC callers, as Envoy translates it).
func (a *Authz) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	resp := a.check(ctx, req)
	a.latency.Observe(time.Since(start).Seconds())
	return resp, nil
}

func (a *Authz) check(ctx context.Context, req *authv3.CheckRequest) *authv3.CheckResponse {
	st := a.current.Load()
	if st == nil {
		a.unknown.Inc()
		return deniedResponse
	}
	attrs := req.GetAttributes()
	ext := attrs.GetContextExtensions()
	dest := attrs.GetDestination()
	en, ok := st.eval.Lookup(ext[ExtDestination], dest.GetPrincipal())
	if !ok {
		a.unknown.Inc()
		a.logDecision(ctx, req, nil, false, nil)
		return deniedResponse
	}
	h := attrs.GetRequest().GetHttp()
	var claims map[string]any
	if len(st.jwt) > 0 {
		name := ext[ExtDestination]
		if name == "" {
			name = en.Service.String()
		}
		if v := st.jwt[name]; v != nil {
			var err error
			if claims, err = v.Verify(h.GetHeaders(), h.GetPath(), time.Now()); err != nil {
				a.jwtDenied.Inc()
				a.log.LogAttrs(ctx, slog.LevelDebug, "end-user authentication failed", slog.String("destination", name), slog.String("err", err.Error()))
				if errors.Is(err, policy.ErrJWTMissing) {
					return missingJWTResponse
				}
				return invalidJWTResponse
			}
		}
	}
	r := policy.Request{
		Claims:    claims,
		Principal: attrs.GetSource().GetPrincipal(),
		Method:    h.GetMethod(),
		Path:      h.GetPath(),
		Host:      h.GetHost(),
		Headers:   h.GetHeaders(),
	}
	if p, err := strconv.ParseUint(ext[ExtPort], 10, 16); err == nil {
		r.Port = uint32(p)
	} else {
		r.Port = en.AppPort(dest.GetAddress().GetSocketAddress().GetPortValue())
	}
	d := en.Ruleset.Decide(&r, st.eval.NamespacePrefix())
	a.count(d.Rule, d.Allow, st.counters, &a.byDefault)
	if d.DryRun {
		a.dryRun(ctx, st, en, &d, &r)
	}
	a.logDecision(ctx, req, en, d.Allow, d.Rule)
	a.audit(en, &r, &d) // audit.go
	if !d.Allow {
		return deniedResponse
	}
	return okResponse
}

func (a *Authz) count(r *policy.Rule, allow bool, m map[*policy.Rule]*[2]prometheus.Counter, def *[2]prometheus.Counter) {
	i := 0
	if !allow {
		i = 1
	}
	if r == nil {
		if def != nil {
			def[i].Inc()
		}
		return
	}
	if c, ok := m[r]; ok {
		c[i].Inc()
	}
}

// dryRun records what the dry-run rules would have decided, and logs when
// it differs from the decision made.
func (a *Authz) dryRun(ctx context.Context, st *state, en *policy.Entry, d *policy.Decision, r *policy.Request) {
	a.count(d.DryRule, d.DryAllow, st.dry, &a.dryDefault)
	if d.DryAllow != d.Allow {
		a.log.LogAttrs(ctx, slog.LevelInfo, "dry-run rules would decide otherwise",
			slog.String("destination", en.Service.String()), slog.String("source", r.Principal),
			slog.String("method", r.Method), slog.String("path", r.Path),
			slog.Bool("allowed", d.Allow), slog.String("rule", ruleID(d.Rule)),
			slog.Bool("dry_run_allowed", d.DryAllow), slog.String("dry_run_rule", ruleID(d.DryRule)))
	}
}

// logDecision logs a decision at debug level (and costs nothing otherwise).
func (a *Authz) logDecision(ctx context.Context, req *authv3.CheckRequest, en *policy.Entry, allow bool, r *policy.Rule) {
	if !a.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	dest, rule := ruleUnknown, ruleUnknown
	if en != nil {
		dest, rule = en.Service.String(), ruleID(r)
	}
	attrs := req.GetAttributes()
	a.log.LogAttrs(ctx, slog.LevelDebug, "check", slog.String("destination", dest),
		slog.String("source", attrs.GetSource().GetPrincipal()), slog.String("method", attrs.GetRequest().GetHttp().GetMethod()),
		slog.String("path", attrs.GetRequest().GetHttp().GetPath()), slog.Bool("allowed", allow), slog.String("rule", rule))
}

func ruleID(r *policy.Rule) string {
	if r == nil {
		return ruleDefault
	}
	return r.ID
}
