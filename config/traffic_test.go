package config

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

const greeterDecl = `
service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 50051
    labels  = { version = "v1" }
  }
}
subset "greeter" "v1" {
  labels = { version = "v1" }
}
subset "greeter" "v2" {
  labels = { version = "v2" }
}
`

// The exact form the traffic issue fixes must decode.
func TestTrafficIssueForm(t *testing.T) {
	src := greeterDecl + `
route "greeter" {
  rule {
    match {
      header "x-canary" {
        exact = "true"
      }
    }
    destination {
      subset = "v2"
    }
  }
  rule {
    split {
      subset = "v1"
      weight = 90
    }
    split {
      subset = "v2"
      weight = 10
    }
  }
}
`
	cfg, diags := Parse([]File{{Name: "t.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	r := cfg.Traffic.Routes[ServiceRef{"default", "greeter"}]
	if r == nil || len(r.Rules) != 2 {
		t.Fatalf("route = %+v", r)
	}
	h := r.Rules[0].Match.Headers[0]
	if h.Name != "x-canary" || h.Exact != "true" || r.Rules[0].Destination.Subset != "v2" {
		t.Fatalf("rule 0 = %+v %+v", h, r.Rules[0].Destination)
	}
	if s := r.Rules[1].Splits; len(s) != 2 || s[0].Subset != "v1" || s[0].Weight != 90 || s[1].Subset != "v2" || s[1].Weight != 10 {
		t.Fatalf("splits = %+v", s)
	}
	if !r.Rules[1].Match.CatchAll() || r.Rules[0].Match.CatchAll() {
		t.Fatal("catch-all detection")
	}
	if len(cfg.Warnings) != 0 {
		t.Fatalf("unexpected warnings: %v", cfg.Warnings)
	}
}

func TestServiceDefaultsDecode(t *testing.T) {
	src := greeterDecl + `
service_defaults "greeter" {
  connect_timeout = "1s"
  request_timeout = "5s"
  locality_failover = true
  retries {
    attempts        = 3
    per_try_timeout = "200ms"
    retry_on        = ["unavailable", "5xx"]
  }
  load_balancer {
    policy = "ring_hash"
    hash {
      header = "x-user"
    }
  }
  circuit_breaker {
    max_requests = 10
  }
  outlier_detection {
    consecutive_5xx    = 3
    failure_percentage = 50
  }
}
`
	cfg, diags := Parse([]File{{Name: "t.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	d := cfg.Traffic.Defaults[ServiceRef{"default", "greeter"}]
	if d.ConnectTimeout != time.Second || d.RequestTimeout != 5*time.Second || !d.LocalityFailover {
		t.Fatalf("defaults = %+v", d)
	}
	if d.Retries.Attempts != 3 || d.Retries.PerTryTimeout != 200*time.Millisecond || strings.Join(d.Retries.RetryOn, ",") != "unavailable,5xx" {
		t.Fatalf("retries = %+v", d.Retries)
	}
	if d.LoadBalancer.Policy != "ring_hash" || d.LoadBalancer.Hash[0].Header != "x-user" || *d.CircuitBreaker.MaxRequests != 10 {
		t.Fatalf("lb/cb = %+v %+v", d.LoadBalancer, d.CircuitBreaker)
	}
	if *d.Outlier.Consecutive5xx != 3 || *d.Outlier.FailurePercentage != 50 || d.Outlier.Interval != 10*time.Second {
		t.Fatalf("outlier = %+v", d.Outlier)
	}
	// per_try_timeout and connect_timeout are not honoured by proxyless gRPC:
	// the service is grpc, so warnings say so (t.hcl is greeterDecl then src:
	// lines 17 and 21). The rest is honoured: ring hash on a header,
	// max_requests, and outlier detection with failure_percentage.
	checkDiags(t, "t.hcl", cfg.Warnings,
		wantDiag{line: 17, warning: true, summary: "Not supported by proxyless gRPC", detail: "ignore connect_timeout"},
		wantDiag{line: 21, warning: true, summary: "Not supported by proxyless gRPC", detail: "ignore per_try_timeout"},
	)
}

// wantDiag is a diagnostic a test expects in the file under test.
type wantDiag struct {
	line    int
	warning bool
	summary string
	detail  string // a substring of the detail
}

// checkDiags asserts that diags are exactly the wanted ones, in any order,
// all in file.
func checkDiags(t *testing.T, file string, diags hcl.Diagnostics, want ...wantDiag) {
	t.Helper()
	left := slices.Clone(diags)
	for _, w := range want {
		i := slices.IndexFunc(left, func(d *hcl.Diagnostic) bool {
			return d.Subject != nil && d.Subject.Filename == file && d.Subject.Start.Line == w.line &&
				(d.Severity == hcl.DiagWarning) == w.warning && d.Summary == w.summary && strings.Contains(d.Detail, w.detail)
		})
		if i < 0 {
			t.Errorf("no diagnostic %+v in:\n%s", w, diagList(diags))
			continue
		}
		left = slices.Delete(left, i, i+1)
	}
	if len(left) > 0 {
		t.Errorf("unexpected diagnostics:\n%s", diagList(left))
	}
}

func diagList(diags hcl.Diagnostics) string {
	var b strings.Builder
	for _, d := range diags {
		fmt.Fprintf(&b, "  %v: %s: %s (severity %v)\n", d.Subject, d.Summary, d.Detail, d.Severity)
	}
	return b.String()
}

// Splits and mirrors name services as destinations do: one nobody declares
// is reported (unless a registry may hold it), and proxyless gRPC is warned
// about the circuit breaker limits it does not implement.
func TestTrafficDestinationServicesAndGRPCLimits(t *testing.T) {
	const registry = "consul {}\n"
	const next = `
service "greeter-next" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 50061
  }
}
service "web" {
  protocol = "http"
  endpoint {
    address = "127.0.0.1"
    port    = 8080
  }
}
`
	for _, tc := range []struct {
		name  string
		extra string // another file, beside greeterDecl
		src   string // rules.hcl
		want  []wantDiag
	}{
		{name: "split to an unknown service", src: `route "greeter" {
  rule {
    split {
      service = "typo"
      weight  = 50
    }
    split {
      subset = "v1"
      weight = 50
    }
  }
}`, want: []wantDiag{{line: 3, warning: true, summary: "Unknown service", detail: "No service block declares default/typo"}}},
		{name: "split to an unknown service in another namespace", src: `route "greeter" {
  rule {
    split {
      subset = "v1"
      weight = 90
    }
    split {
      service = "staging/greeter"
      weight  = 10
    }
  }
}`, want: []wantDiag{{line: 7, warning: true, summary: "Unknown service", detail: "staging/greeter"}}},
		{name: "mirror to an unknown service", src: `route "greeter" {
  rule {
    destination {
      subset = "v1"
    }
    mirror {
      service = "greeter-shadow"
      percent = 5
    }
  }
}`, want: []wantDiag{
			{line: 6, warning: true, summary: "Unknown service", detail: "default/greeter-shadow"},
			{line: 6, warning: true, summary: "Not supported by proxyless gRPC", detail: "ignore mirror"},
		}},
		{name: "destination to an unknown service", src: `route "greeter" {
  rule {
    destination {
      service = "greeter-nxt"
    }
  }
}`, want: []wantDiag{{line: 3, warning: true, summary: "Unknown service", detail: "default/greeter-nxt"}}},
		{name: "split to an unknown service and subset", src: `route "greeter" {
  rule {
    split {
      service = "typo"
      subset  = "v1"
      weight  = 100
    }
  }
}`, want: []wantDiag{
			{line: 3, warning: true, summary: "Unknown service", detail: "default/typo"},
			{line: 3, warning: false, summary: "Unknown subset", detail: "default/typo has no subset \"v1\""},
		}},
		{name: "split and mirror to declared services", extra: next, src: `route "greeter" {
  rule {
    split {
      subset = "v1"
      weight = 90
    }
    split {
      service = "greeter-next"
      weight  = 10
    }
  }
}
route "web" {
  rule {
    destination {
      service = "default/web"
    }
    mirror {
      service = "greeter-next"
    }
  }
}`},
		{name: "a registry may hold any service", extra: registry, src: `route "greeter" {
  rule {
    match {
      header "x-shadow" {
        present = true
      }
    }
    destination {
      service = "other/greeter"
    }
  }
  rule {
    split {
      service = "typo"
      weight  = 50
    }
    split {
      subset = "v1"
      weight = 50
    }
  }
}
route "web" {
  rule {
    destination {
      service = "web-next"
    }
    mirror {
      service = "web-shadow"
    }
  }
}`},
		{name: "circuit breaker limits on a grpc service", src: `service_defaults "greeter" {
  circuit_breaker {
    max_connections      = 100
    max_pending_requests = 50
    max_requests         = 200
    max_retries          = 3
  }
}`, want: []wantDiag{{line: 2, warning: true, summary: "Not supported by proxyless gRPC",
			detail: "ignore circuit breaker max_connections, max_pending_requests, max_retries (only max_requests)"}}},
		{name: "max_connections alone on a grpc service", src: `service_defaults "greeter" {
  circuit_breaker {
    max_connections = 100
  }
}`, want: []wantDiag{{line: 2, warning: true, summary: "Not supported by proxyless gRPC", detail: "ignore circuit breaker max_connections (only max_requests)"}}},
		{name: "max_pending_requests alone on a grpc service", src: `service_defaults "greeter" {
  circuit_breaker {
    max_pending_requests = 10
  }
}`, want: []wantDiag{{line: 2, warning: true, summary: "Not supported by proxyless gRPC", detail: "ignore circuit breaker max_pending_requests (only max_requests)"}}},
		{name: "max_retries alone on a grpc service", src: `service_defaults "greeter" {
  circuit_breaker {
    max_retries = 2
  }
}`, want: []wantDiag{{line: 2, warning: true, summary: "Not supported by proxyless gRPC", detail: "ignore circuit breaker max_retries (only max_requests)"}}},
		{name: "max_requests on a grpc service", src: `service_defaults "greeter" {
  circuit_breaker {
    max_requests = 1
  }
}`},
		{name: "circuit breaker limits on an http service", extra: next, src: `service_defaults "web" {
  circuit_breaker {
    max_connections      = 100
    max_pending_requests = 50
    max_retries          = 3
  }
}`},
		{name: "protocol set to grpc by service_defaults", extra: next, src: `service_defaults "web" {
  protocol = "grpc"
  circuit_breaker {
    max_retries = 3
  }
}`, want: []wantDiag{{line: 3, warning: true, summary: "Not supported by proxyless gRPC", detail: "default/web is a gRPC service"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := []File{{Name: "svc.hcl", Content: []byte(greeterDecl)}, {Name: "rules.hcl", Content: []byte(tc.src)}}
			if tc.extra != "" {
				files = append(files, File{Name: "extra.hcl", Content: []byte(tc.extra)})
			}
			_, diags := Parse(files)
			checkDiags(t, "rules.hcl", diags, tc.want...)
		})
	}
}

// Every mistake is an error (or warning) naming the file and the line of the
// offending part.
func TestTrafficDiagnostics(t *testing.T) {
	for _, tc := range []struct {
		name    string
		src     string
		line    int
		summary string
		warning bool
	}{
		{"weights not 100", `route "greeter" {
  rule {
    split {
      subset = "v1"
      weight = 80
    }
    split {
      subset = "v2"
      weight = 10
    }
  }
}`, 3, "Split weights do not add up to 100", false},
		{"unknown subset", `route "greeter" {
  rule {
    destination {
      subset = "v3"
    }
  }
}`, 3, "Unknown subset", false},
		{"shadowed rule", `route "greeter" {
  rule {
    destination {
      subset = "v1"
    }
  }
  rule {
    match {
      header "x" {
        exact = "y"
      }
    }
  }
}`, 7, "Unreachable rule", false},
		{"bad duration", `service_defaults "greeter" {
  request_timeout = "5 seconds"
}`, 2, "Invalid duration", false},
		{"duration out of range", `service_defaults "greeter" {
  connect_timeout = "0s"
}`, 2, "Duration out of range", false},
		{"percent out of range", `route "greeter" {
  rule {
    fault {
      abort {
        http_status = 503
        percent     = 150
      }
    }
  }
}`, 6, "Percentage out of range", false},
		{"bad grpc status", `route "greeter" {
  rule {
    fault {
      abort {
        grpc_status = "BROKEN"
        percent     = 10
      }
    }
  }
}`, 5, "Invalid gRPC status", false},
		{"abort with both statuses", `route "greeter" {
  rule {
    fault {
      abort {
        grpc_status = "UNAVAILABLE"
        http_status = 503
        percent     = 10
      }
    }
  }
}`, 4, "Invalid abort", false},
		{"retry condition", `service_defaults "greeter" {
  retries {
    attempts = 2
    retry_on = ["sometimes"]
  }
}`, 4, "Invalid retry condition", false},
		{"two actions", `route "greeter" {
  rule {
    destination {
      subset = "v1"
    }
    redirect {
      host = "example.com"
    }
  }
}`, 2, "Conflicting actions", false},
		{"path never matches", `route "greeter" {
  rule {
    match {
      path {
        prefix = "api"
      }
    }
  }
}`, 4, "Invalid path", false},
		{"bad regex", `route "greeter" {
  rule {
    match {
      path {
        regex = "(unclosed"
      }
    }
  }
}`, 5, "Invalid regular expression", false},
		{"hash without hashing policy", `service_defaults "greeter" {
  load_balancer {
    policy = "round_robin"
    hash {
      header = "x"
    }
  }
}`, 4, "Hash keys need a hashing policy", false},
		{"outlier without trigger", `service_defaults "greeter" {
  outlier_detection {
    interval = "1s"
  }
}`, 2, "Outlier detection without a trigger", false},
		{"empty subset", `subset "greeter" "v9" {
  labels = {}
}`, 2, "Empty subset", false},
		{"duplicate route", `route "greeter" {
  rule {
  }
}
route "greeter" {
  rule {
  }
}`, 5, "Duplicate route", false},
		{"unknown service", `route "nobody" {
  rule {
  }
}`, 1, "Unknown service", true},
		{"mirror on a grpc service", `route "greeter" {
  rule {
    mirror {
      subset = "v2"
    }
  }
}`, 3, "Not supported by proxyless gRPC", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := []File{{Name: "svc.hcl", Content: []byte(greeterDecl)}, {Name: "rules.hcl", Content: []byte(tc.src)}}
			_, diags := Parse(files)
			var found *hcl.Diagnostic
			for _, d := range diags {
				if d.Summary == tc.summary {
					found = d
					break
				}
			}
			if found == nil {
				t.Fatalf("no %q diagnostic in:\n%s", tc.summary, diags.Error())
			}
			if found.Subject == nil || found.Subject.Filename != "rules.hcl" || found.Subject.Start.Line != tc.line {
				t.Fatalf("diagnostic at %v, want rules.hcl line %d", found.Subject, tc.line)
			}
			if (found.Severity == hcl.DiagWarning) != tc.warning {
				t.Fatalf("severity %v, warning=%v wanted", found.Severity, tc.warning)
			}
			if !tc.warning != diags.HasErrors() {
				t.Fatalf("HasErrors = %v", diags.HasErrors())
			}
		})
	}
}

// A rejected rule file changes nothing that is served.
func TestRejectedRuleFileKeepsTheRoute(t *testing.T) {
	s := NewStore(slog.New(slog.DiscardHandler))
	good := `route "greeter" {
  rule {
    split {
      subset = "v1"
      weight = 90
    }
    split {
      subset = "v2"
      weight = 10
    }
  }
}`
	bad := strings.Replace(good, "weight = 10", "weight = 20", 1)
	s.Update(FileSet{Source: "t", Files: []File{{Name: "svc.hcl", Content: []byte(greeterDecl)}, {Name: "rules.hcl", Content: []byte(good)}}})
	v := s.Current().Version
	s.Update(FileSet{Source: "t", Files: []File{{Name: "svc.hcl", Content: []byte(greeterDecl)}, {Name: "rules.hcl", Content: []byte(bad)}}})
	cfg := s.Current()
	if cfg.Version != v || len(cfg.Status.Rejected) != 1 {
		t.Fatalf("version %s (was %s), rejected %v", cfg.Version, v, cfg.Status.Rejected)
	}
	if w := cfg.Traffic.Routes[ServiceRef{"default", "greeter"}].Rules[0].Splits[1].Weight; w != 10 {
		t.Fatalf("the served split changed to %d", w)
	}
}
