package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/adapters/retry"
	"github.com/bowlinemesh/bowline/config"
)

// IntentionsFilePrefix starts the name of every file an IntentionsSource
// delivers: the intentions of web are "consul-intentions:default/web.hcl".
const IntentionsFilePrefix = "consul-intentions:"

// IntentionsConfig configures an IntentionsSource (the fields are as in
// KVConfig).
type IntentionsConfig struct {
	Address    string
	Token      string
	Datacenter string
	HTTPClient *http.Client
	// WaitTime, MinBackoff and MaxBackoff are as in Config.
	WaitTime, MinBackoff, MaxBackoff time.Duration
}

// IntentionsSource is a config.FileSource that turns Consul's intentions
// (service-intentions config entries) into Bowline authorization rules: one
// generated HCL file per destination, loaded and validated like any other
// (ConvertIntentions says how). It follows the entries with one blocking
// query, with the index rules and backoff of the other watches; while
// Consul cannot be reached it sends a FileSet with Err once, so the rules
// last read from it stay in force.
type IntentionsSource struct {
	cfg    IntentionsConfig
	log    *slog.Logger
	client *api.Client
}

var _ config.FileSource = (*IntentionsSource)(nil)

// NewIntentions returns an intentions source; log may be nil. It does not
// contact Consul.
func NewIntentions(cfg IntentionsConfig, log *slog.Logger) (*IntentionsSource, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Token = cmp.Or(cfg.Token, os.Getenv(api.HTTPTokenEnvName))
	cfg.WaitTime = cmp.Or(cfg.WaitTime, DefaultWaitTime)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff), cfg.MinBackoff)
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	ac.Token, ac.Datacenter, ac.WaitTime = cfg.Token, cfg.Datacenter, cfg.WaitTime
	if cfg.HTTPClient != nil {
		ac.HttpClient = cfg.HTTPClient
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul: client for %s: %w", ac.Address, err)
	}
	return &IntentionsSource{cfg: cfg, log: log.With("source", "consul-intentions"), client: client}, nil
}

// Name implements config.FileSource.
func (s *IntentionsSource) Name() string { return "consul-intentions" }

// Run implements config.FileSource: it follows the intentions until ctx is
// cancelled and then returns nil. It never fails because Consul is down.
func (s *IntentionsSource) Run(ctx context.Context, out chan<- config.FileSet) error {
	bo := &retry.Backoff{Min: s.cfg.MinBackoff, Max: s.cfg.MaxBackoff}
	var (
		index         uint64
		last          []config.File
		sent, failing bool
		lastReq       time.Time
	)
	send := func(fs config.FileSet) bool {
		select {
		case out <- fs:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for pace(ctx, &lastReq) {
		start, asked := time.Now(), index
		entries, meta, err := s.list(ctx, index)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			err = fmt.Errorf("consul: read intentions: %w", err)
			if !failing {
				s.log.Warn("consul unreachable; the rules read from its intentions stay in force", "err", err)
				if !send(config.FileSet{Err: err}) {
					return nil
				}
			}
			failing, index = true, 0
			if !retry.Sleep(ctx, bo.Next()) {
				return nil
			}
			continue
		}
		bo.Reset()
		if asked != 0 && meta.LastIndex == asked {
			if cutShort(asked, meta.LastIndex, start, s.cfg.WaitTime) {
				index = 0
			}
			continue
		}
		index = nextIndex(index, meta.LastIndex)
		files, notes := ConvertIntentions(entries)
		for _, n := range notes {
			s.log.Warn("consul intention only partly applied", "note", n)
		}
		if sent && !failing && sameFileSet(last, files) {
			continue
		}
		if !send(config.FileSet{Files: files}) {
			return nil
		}
		last, sent, failing = files, true, false
	}
	return nil
}

func (s *IntentionsSource) list(ctx context.Context, index uint64) ([]*api.ServiceIntentionsConfigEntry, *api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout(index, s.cfg.WaitTime))
	defer cancel()
	q := &api.QueryOptions{Datacenter: s.cfg.Datacenter, WaitIndex: index, WaitTime: s.cfg.WaitTime, RequireConsistent: index == 0}
	list, meta, err := s.client.ConfigEntries().List(api.ServiceIntentions, q.WithContext(ctx))
	if err == nil && meta == nil {
		err = errors.New("no query metadata in the response")
	}
	var out []*api.ServiceIntentionsConfigEntry
	for _, e := range list {
		if si, ok := e.(*api.ServiceIntentionsConfigEntry); ok {
			out = append(out, si)
		}
	}
	return out, meta, err
}

// ConvertIntentions turns service-intentions config entries into one HCL
// file of authorization rules per destination, named
// "consul-intentions:<namespace>/<service>.hcl", sorted by name. The notes
// say what could not be expressed (docs/policy.md, "Consul intentions"):
//
//   - a source with an action (L4) is a rule with that action from the
//     source service;
//   - a source with permissions (L7) is one rule per permission: methods and
//     path (exact or prefix) become a to block, header matches when blocks;
//   - the wildcard source "*" is a rule from any authenticated caller except
//     the sources this entry names exactly (Consul lets an exact source take
//     precedence over "*");
//   - what has no equivalent (a path regex, a negated regex, contains,
//     ignore_case, JWT requirements, peers, partitions, sameness groups)
//     fails closed: an allow permission that needs it is left out (requests
//     from the source must then match another), a deny permission applies
//     without it; a wildcard destination is skipped.
func ConvertIntentions(entries []*api.ServiceIntentionsConfigEntry) ([]config.File, []string) {
	var files []config.File
	var notes []string
	for _, e := range entries {
		if e == nil {
			continue
		}
		ns := cmp.Or(e.Namespace, "default")
		if e.Name == "*" {
			notes = append(notes, fmt.Sprintf("intentions for every destination (%s/*) are not supported; write them as rules per service", ns))
			continue
		}
		src, n := intentionHCL(e, ns)
		notes = append(notes, n...)
		files = append(files, config.File{Name: IntentionsFilePrefix + ns + "/" + e.Name + ".hcl", Content: []byte(src)})
	}
	slices.SortFunc(files, func(a, b config.File) int { return strings.Compare(a.Name, b.Name) })
	return files, notes
}

func intentionHCL(e *api.ServiceIntentionsConfigEntry, ns string) (string, []string) {
	var b strings.Builder
	var notes []string
	note := func(format string, args ...any) {
		n := fmt.Sprintf("%s/%s: ", ns, e.Name) + fmt.Sprintf(format, args...)
		notes = append(notes, n)
		fmt.Fprintf(&b, "  # Not applied as written: %s\n", n)
	}
	fmt.Fprintf(&b, "# Generated from Consul's service-intentions config entry %s (namespace %s, modify index %d).\n", hclQuote(e.Name), ns, e.ModifyIndex)
	b.WriteString("# Change the intentions in Consul: this file is rewritten from them.\n")
	fmt.Fprintf(&b, "authorization %s {\n  namespace = %s\n", hclQuote(e.Name), hclQuote(ns))
	if e.JWT != nil {
		note("the entry's JWT requirement")
	}
	var exact []string
	for _, s := range e.Sources {
		if s != nil && s.Name != "*" && s.Peer == "" && s.SamenessGroup == "" {
			exact = append(exact, cmp.Or(s.Namespace, ns)+"/"+s.Name)
		}
	}
	slices.Sort(exact)
	exact = slices.Compact(exact)
	sources := slices.Clone(e.Sources)
	slices.SortStableFunc(sources, func(a, b *api.SourceIntention) int { return cmp.Compare(b.Precedence, a.Precedence) })
	for _, s := range sources {
		if s == nil {
			continue
		}
		if s.Peer != "" || s.SamenessGroup != "" || (s.Partition != "" && s.Partition != "default") {
			note("source %q from a peer, partition or sameness group", s.Name)
			continue
		}
		var from string
		if s.Name == "*" {
			from = `principals = ["*"]`
			if len(exact) > 0 {
				from += "  not_services = " + hclList(exact)
			}
		} else {
			from = "services = " + hclList([]string{cmp.Or(s.Namespace, ns) + "/" + s.Name})
		}
		fmt.Fprintf(&b, "  # Source %s (precedence %d)\n", hclQuote(s.Name), s.Precedence)
		if len(s.Permissions) == 0 {
			fmt.Fprintf(&b, "  rule {\n    action = %s\n    from { %s }\n  }\n", hclQuote(string(s.Action)), from)
			continue
		}
		for i, p := range s.Permissions {
			to, whens, missing := permissionHCL(p)
			deny := p.Action == api.IntentionActionDeny
			if missing != "" {
				note("source %q, permission %d: %s", s.Name, i, missing)
				if !deny {
					// Left out; a rule that never matches keeps allow rules
					// required for the destination.
					fmt.Fprintf(&b, "  rule {\n    action = \"allow\"\n    from { %s }\n    to { methods = [\"*\"]  not_methods = [\"*\"] }\n  }\n", from)
					continue
				}
				to, whens = "", nil // a deny permission applies without it
			}
			fmt.Fprintf(&b, "  rule {\n    action = %s\n    from { %s }\n", hclQuote(string(p.Action)), from)
			if to != "" {
				fmt.Fprintf(&b, "    to { %s }\n", to)
			}
			for _, w := range whens {
				b.WriteString(w)
			}
			b.WriteString("  }\n")
		}
	}
	b.WriteString("}\n")
	return b.String(), notes
}

// permissionHCL writes a permission's HTTP match; missing says what cannot
// be expressed.
func permissionHCL(p *api.IntentionPermission) (to string, whens []string, missing string) {
	if p.JWT != nil {
		return "", nil, "a JWT requirement"
	}
	h := p.HTTP
	if h == nil {
		return "", nil, ""
	}
	var parts []string
	if len(h.Methods) > 0 {
		parts = append(parts, "methods = "+hclList(h.Methods))
	}
	switch {
	case h.PathRegex != "":
		return "", nil, "a path regex"
	case h.PathExact != "":
		if strings.Contains(h.PathExact, "*") {
			return "", nil, "a path with a *"
		}
		parts = append(parts, "paths = "+hclList([]string{h.PathExact}))
	case h.PathPrefix != "":
		if strings.Contains(h.PathPrefix, "*") {
			return "", nil, "a path with a *"
		}
		parts = append(parts, "paths = "+hclList([]string{h.PathPrefix + "*"}))
	}
	for _, hd := range h.Header {
		name := strings.ToLower(hd.Name)
		if name == ":scheme" || strings.HasPrefix(name, "grpc-") || strings.ContainsAny(name, "[]\"") {
			return "", nil, fmt.Sprintf("header %q", hd.Name)
		}
		if hd.IgnoreCase || hd.Contains != "" {
			return "", nil, fmt.Sprintf("header %q: contains and ignore_case", hd.Name)
		}
		var cond string
		values := "values"
		if hd.Invert {
			values = "not_values"
		}
		value := func(v string) (string, bool) { return hclList([]string{v}), v != "" && !strings.Contains(v, "*") }
		var ok = true
		switch {
		case hd.Present:
			cond = fmt.Sprintf("present = %t", !hd.Invert)
		case hd.Exact != "":
			var v string
			v, ok = value(hd.Exact)
			cond = values + " = " + v
		case hd.Prefix != "":
			var v string
			v, ok = value(hd.Prefix)
			cond = values + " = " + strings.Replace(v, `"]`, `*"]`, 1)
		case hd.Suffix != "":
			var v string
			v, ok = value(hd.Suffix)
			cond = values + " = " + strings.Replace(v, `["`, `["*`, 1)
		case hd.Regex != "" && !hd.Invert:
			cond = "regex = " + hclQuote(hd.Regex)
		default:
			ok = false
		}
		if !ok {
			return "", nil, fmt.Sprintf("header %q", hd.Name)
		}
		whens = append(whens, fmt.Sprintf("    when {\n      key = %s\n      %s\n    }\n", hclQuote("request.headers["+name+"]"), cond))
	}
	return strings.Join(parts, "  "), whens, ""
}

// hclQuote quotes a string for HCL: Go's escapes, and template sequences
// doubled so that they stay literal.
func hclQuote(s string) string {
	q := fmt.Sprintf("%q", s)
	q = strings.ReplaceAll(q, "${", "$${")
	return strings.ReplaceAll(q, "%{", "%%{")
}

func hclList(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = hclQuote(v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
