package policyd

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/policy"
)

// APIError is an error with an HTTP status; its message is shown to clients.
type APIError struct {
	Code    int    `json:"-"`
	Message string `json:"error"`
}

func (e *APIError) Error() string { return e.Message }

type admin struct {
	log *slog.Logger
	d   *Daemon
	mux *http.ServeMux
}

// newAdmin serves /healthz, /readyz, /metrics and /v1/rules. Handlers return
// errors; writeError turns them into JSON.
func newAdmin(log *slog.Logger, d *Daemon, gatherer prometheus.Gatherer) http.Handler {
	a := &admin{log: log, d: d, mux: http.NewServeMux()}
	a.handle("GET /healthz", func(w http.ResponseWriter, r *http.Request) error {
		return writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	a.handle("GET /readyz", func(w http.ResponseWriter, r *http.Request) error {
		if !d.Ready() {
			return &APIError{Code: http.StatusServiceUnavailable, Message: "no configuration and catalog yet"}
		}
		return writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	a.handle("GET /v1/rules", a.rules)
	d.Telemetry.Handle(a.mux) // the dashboard at /, /v1/graph, /v1/signals
	a.handle("/", func(w http.ResponseWriter, r *http.Request) error {
		return &APIError{Code: http.StatusNotFound, Message: fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)}
	})
	return a.mux
}

func (a *admin) handle(pattern string, h func(http.ResponseWriter, *http.Request) error) {
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		if err := h(w, r); err != nil {
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				a.log.Error("admin: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				apiErr = &APIError{Code: http.StatusInternalServerError, Message: "internal error"}
			}
			_ = writeJSON(w, apiErr.Code, apiErr)
		}
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("admin: encode response: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, err = w.Write(append(b, '\n'))
	return err
}

// Rules is GET /v1/rules: the rules in force.
type Rules struct {
	// Config is the version of the configuration they come from.
	Config       string              `json:"config"`
	TrustDomain  string              `json:"trust_domain"`
	DefaultDeny  bool                `json:"default_deny"`
	Destinations []DestinationRules  `json:"destinations"`
	Rejected     []RejectedFile      `json:"rejected"`
	Warnings     []config.Diagnostic `json:"warnings,omitempty"`
}

// DestinationRules are the rules about one service.
type DestinationRules struct {
	Service  string         `json:"service"`
	Protocol string         `json:"protocol,omitempty"`
	Enforce  config.Enforce `json:"enforce"`
	Rules    []RuleView     `json:"rules"`
}

// RuleView is one rule as written, with where it is declared.
type RuleView struct {
	ID       string           `json:"id"`
	Position string           `json:"position"`
	Action   string           `json:"action"`
	Mode     string           `json:"mode"`
	From     []map[string]any `json:"from,omitempty"`
	To       []map[string]any `json:"to,omitempty"`
	When     []map[string]any `json:"when,omitempty"`
}

// RejectedFile is a configuration file whose newest version was refused.
type RejectedFile struct {
	Name        string              `json:"name"`
	Diagnostics []config.Diagnostic `json:"diagnostics"`
}

func (a *admin) rules(w http.ResponseWriter, r *http.Request) error {
	st := a.d.Authz.Current()
	if st == nil {
		return &APIError{Code: http.StatusServiceUnavailable, Message: "no rules yet"}
	}
	m := st.eval.Meta()
	out := Rules{Config: st.cfg.Version, TrustDomain: m.TrustDomain, DefaultDeny: m.DefaultDeny, Destinations: []DestinationRules{}, Rejected: []RejectedFile{}}
	for _, en := range st.eval.Entries() {
		dr := DestinationRules{Service: en.Service.String(), Protocol: string(en.Destination.Protocol), Enforce: en.Destination.Enforce}
		for _, rule := range en.Destination.Rules {
			dr.Rules = append(dr.Rules, ruleView(rule))
		}
		out.Destinations = append(out.Destinations, dr)
	}
	for _, rej := range st.cfg.Status.Rejected {
		out.Rejected = append(out.Rejected, RejectedFile{Name: rej.Name, Diagnostics: rej.DiagnosticsJSON()})
	}
	out.Warnings = config.DiagnosticsJSON(st.cfg.Warnings, nil)
	return writeJSON(w, http.StatusOK, out)
}

func ruleView(r *policy.Rule) RuleView {
	v := RuleView{ID: r.ID, Position: r.Pos, Action: string(r.Action), Mode: "enforce"}
	if r.DryRun {
		v.Mode = "dry-run"
	}
	pats := func(m map[string]any, k string, ps []policy.Pattern) {
		if ps == nil {
			return
		}
		s := make([]string, len(ps))
		for i, p := range ps {
			s[i] = p.String()
		}
		m[k] = s
	}
	for _, s := range r.From {
		m := map[string]any{}
		pats(m, "principals", s.Principals)
		pats(m, "not_principals", s.NotPrincipals)
		if s.Services != nil {
			m["services"], m["services_principals"] = names(s.ServiceNames), s.Services
		}
		if s.NotServices != nil {
			m["not_services"], m["not_services_principals"] = names(s.NotServiceNames), s.NotServices
		}
		pats(m, "namespaces", s.Namespaces)
		pats(m, "not_namespaces", s.NotNamespaces)
		v.From = append(v.From, m)
	}
	for _, o := range r.To {
		m := map[string]any{}
		pats(m, "methods", o.Methods)
		pats(m, "not_methods", o.NotMethods)
		pats(m, "paths", o.Paths)
		pats(m, "not_paths", o.NotPaths)
		if o.Ports != nil {
			m["ports"] = o.Ports
		}
		if o.NotPorts != nil {
			m["not_ports"] = o.NotPorts
		}
		pats(m, "hosts", o.Hosts)
		pats(m, "not_hosts", o.NotHosts)
		v.To = append(v.To, m)
	}
	for _, c := range r.When {
		m := map[string]any{"key": c.Key}
		pats(m, "values", c.Values)
		pats(m, "not_values", c.NotValues)
		if c.Regex != "" {
			m["regex"] = c.Regex
		}
		if c.Present != nil {
			m["present"] = *c.Present
		}
		v.When = append(v.When, m)
	}
	return v
}

func names(ks []discovery.ServiceKey) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.String()
	}
	return out
}
