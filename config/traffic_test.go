package config

import (
	"log/slog"
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
	// per_try_timeout, connect_timeout and consecutive errors are not
	// honoured by proxyless gRPC: the service is grpc, so warnings say so.
	if len(cfg.Warnings) < 2 {
		t.Fatalf("want gRPC warnings, got %v", cfg.Warnings)
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
