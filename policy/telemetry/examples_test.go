package telemetry_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/policy/telemetry"
)

// examples/telemetry: the configuration parses, and the Grafana dashboard
// asks only for metrics and labels that policyd exports.
func TestTelemetryExamples(t *testing.T) {
	src, err := os.ReadFile("../../examples/telemetry/telemetry.hcl")
	if err != nil {
		t.Fatal(err)
	}
	cfg, diags := config.Parse([]config.File{{Name: "telemetry.hcl", Content: src}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	if tel := cfg.TelemetrySettings(); tel.Tracing == nil || len(tel.Dimensions) != 1 {
		t.Fatalf("telemetry %+v", tel)
	}

	raw, err := os.ReadFile("../../examples/telemetry/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	// What policyd exports: the names its collectors describe, with the
	// example's configuration applied.
	svc := telemetry.New(telemetry.Options{})
	svc.Update(cfg)
	var exported []string
	descs := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range svc.Collectors() {
			c.Describe(descs)
		}
		for _, d := range telemetry.MetricDescs(svc) {
			descs <- d
		}
		close(descs)
	}()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range descs {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			exported = append(exported, m[1])
		}
	}
	for _, want := range []string{"istio_requests_total", "istio_request_duration_milliseconds", "bowline_telemetry_overflow_total"} {
		if !slices.Contains(exported, want) {
			t.Fatalf("policyd's collectors do not describe %s (described: %v)", want, exported)
		}
	}
	labels := append(slices.Clone(config.StandardTelemetryLabels), "le", "kind")
	metricRe := regexp.MustCompile(`\b(istio|bowline)_[a-z_]+`)
	labelRe := regexp.MustCompile(`\b([a-z_]+)\s*(=~|!~|!=|=)\s*"`)
	byRe := regexp.MustCompile(`by \(([^)]*)\)`)
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			exprs = append(exprs, q["query"].(string))
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("%d queries", len(exprs))
	}
	for _, e := range exprs {
		for _, m := range metricRe.FindAllString(e, -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
			if !slices.Contains(exported, base) {
				t.Errorf("%q asks for %s, which policyd does not export", e, m)
			}
		}
		var used []string
		for _, l := range labelRe.FindAllStringSubmatch(e, -1) {
			used = append(used, l[1])
		}
		for _, b := range byRe.FindAllStringSubmatch(e, -1) {
			for l := range strings.SplitSeq(b[1], ",") {
				used = append(used, strings.TrimSpace(l))
			}
		}
		for _, l := range used {
			if !slices.Contains(labels, l) {
				t.Errorf("%q uses label %s, which the metrics do not have", e, l)
			}
		}
	}
}
