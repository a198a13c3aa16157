package config

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// The telemetry block (docs/telemetry.md):
//
//	telemetry {
//	  enabled    = true     # false: no access log is configured at all
//	  max_series = 10000    # label sets kept by policyd's istio_* metrics
//	  dimension "tenant" {  # an extra label of the request metrics
//	    request_header = "x-tenant"
//	  }
//	  tracing {
//	    otlp_address = "otel-collector:4317"
//	    sampling     = 10   # percent of requests traced
//	  }
//	}

// Telemetry defaults.
const (
	DefaultMaxSeries = 10000
	minMaxSeries     = 10
	maxMaxSeries     = 10_000_000
	// DefaultTracingSampling is the share of requests traced, in percent,
	// when a tracing block sets none.
	DefaultTracingSampling = 1.0
)

// StandardTelemetryLabels are the labels of the request metrics, named as
// Istio's standard metrics name them. The TCP metrics have the same labels
// but response_code and grpc_response_status. Extra dimensions may not
// reuse these names.
var StandardTelemetryLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// TelemetryDecl is the `telemetry` block. A configuration without one has
// telemetry enabled with the defaults (Config.TelemetrySettings).
type TelemetryDecl struct {
	// Enabled: sidecars send access logs to policyd (when the mesh has a
	// policyd block). False configures no access log at all.
	Enabled bool
	// MaxSeries bounds the label sets policyd keeps; later ones fold into
	// an overflow series.
	MaxSeries int
	// Dimensions are extra labels of the request metrics.
	Dimensions []*TelemetryDimension
	// Tracing, when set, configures Envoy's OpenTelemetry tracer.
	Tracing   *TracingDecl
	DeclRange hcl.Range
}

// TelemetryDimension is a `dimension "<label>"` block: an extra label whose
// value is taken from a request or a response header (exactly one).
type TelemetryDimension struct {
	// Label is the Prometheus label name.
	Label string
	// RequestHeader or ResponseHeader names the header (lower case).
	RequestHeader  string
	ResponseHeader string
	DeclRange      hcl.Range
}

// TracingDecl is the `tracing` block of telemetry.
type TracingDecl struct {
	// OTLPAddress is host:port of an OTLP/gRPC collector.
	OTLPAddress string
	// Sampling is the percentage of requests traced (0 to 100).
	Sampling  float64
	DeclRange hcl.Range
}

// TelemetrySettings returns the telemetry settings in force: the block's, or
// the defaults (enabled, DefaultMaxSeries) when there is none. Never nil.
func (c *Config) TelemetrySettings() *TelemetryDecl {
	if c == nil || c.Telemetry == nil {
		return &TelemetryDecl{Enabled: true, MaxSeries: DefaultMaxSeries}
	}
	return c.Telemetry
}

var telemetrySchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "enabled"}, {Name: "max_series"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "dimension", LabelNames: []string{"label"}}, {Type: "tracing"}},
}

var (
	promLabelRe  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	headerNameRe = regexp.MustCompile(`^[a-z0-9!#$%&'*+.^_|~-]+$`)
)

func decodeTelemetryBlock(b *hcl.Block) (*TelemetryDecl, hcl.Diagnostics) {
	t := &TelemetryDecl{Enabled: true, MaxSeries: DefaultMaxSeries, DeclRange: b.DefRange}
	content, diags := b.Body.Content(telemetrySchema)
	if a, ok := content.Attributes["enabled"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &t.Enabled)...)
	}
	if a, ok := content.Attributes["max_series"]; ok {
		var n int64
		d := gohcl.DecodeExpression(a.Expr, nil, &n)
		diags = append(diags, d...)
		if !d.HasErrors() {
			if n < minMaxSeries || n > maxMaxSeries {
				diags = append(diags, attrError(a, "Invalid max_series", fmt.Sprintf("max_series is a whole number from %d to %d.", minMaxSeries, maxMaxSeries)))
			}
			t.MaxSeries = int(n)
		}
	}
	labels := map[string]hcl.Range{}
	for _, blk := range content.Blocks {
		switch blk.Type {
		case "dimension":
			dim, d := decodeTelemetryDimension(blk)
			diags = append(diags, d...)
			if prev, dup := labels[dim.Label]; dup {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate dimension",
					Detail: fmt.Sprintf("Dimension %q is already declared at %s.", dim.Label, prev), Subject: blk.LabelRanges[0].Ptr()})
				continue
			}
			labels[dim.Label] = blk.DefRange
			t.Dimensions = append(t.Dimensions, dim)
		case "tracing":
			if t.Tracing != nil {
				diags = append(diags, duplicateBlock("tracing", blk, t.Tracing.DeclRange))
				continue
			}
			tr, d := decodeTracingBlock(blk)
			diags = append(diags, d...)
			t.Tracing = tr
		}
	}
	return t, diags
}

var dimensionSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "request_header"}, {Name: "response_header"}},
}

func decodeTelemetryDimension(b *hcl.Block) (*TelemetryDimension, hcl.Diagnostics) {
	dim := &TelemetryDimension{Label: b.Labels[0], DeclRange: b.DefRange}
	content, diags := b.Body.Content(dimensionSchema)
	switch {
	case !promLabelRe.MatchString(dim.Label) || strings.HasPrefix(dim.Label, "__"):
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid dimension name",
			Detail:  fmt.Sprintf("%q is not a Prometheus label name: use letters, digits and '_', not starting with a digit or \"__\".", dim.Label),
			Subject: b.LabelRanges[0].Ptr()})
	case slices.Contains(StandardTelemetryLabels, dim.Label):
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid dimension name",
			Detail:  fmt.Sprintf("%q is one of the standard labels of the metrics; choose another name.", dim.Label),
			Subject: b.LabelRanges[0].Ptr()})
	}
	for name, dst := range map[string]*string{"request_header": &dim.RequestHeader, "response_header": &dim.ResponseHeader} {
		a, ok := content.Attributes[name]
		if !ok {
			continue
		}
		var h string
		d := gohcl.DecodeExpression(a.Expr, nil, &h)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		h = strings.ToLower(h)
		if !headerNameRe.MatchString(h) {
			diags = append(diags, attrError(a, "Invalid header name", fmt.Sprintf("%q is not an HTTP header name.", h)))
			continue
		}
		*dst = h
	}
	if (dim.RequestHeader == "") == (dim.ResponseHeader == "") && !diags.HasErrors() {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Where does the dimension come from?",
			Detail: "A dimension sets exactly one of request_header and response_header.", Subject: b.DefRange.Ptr()})
	}
	return dim, diags
}

var tracingSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "otlp_address", Required: true}, {Name: "sampling"}},
}

func decodeTracingBlock(b *hcl.Block) (*TracingDecl, hcl.Diagnostics) {
	t := &TracingDecl{Sampling: DefaultTracingSampling, DeclRange: b.DefRange}
	content, diags := b.Body.Content(tracingSchema)
	if a, ok := content.Attributes["otlp_address"]; ok {
		d := gohcl.DecodeExpression(a.Expr, nil, &t.OTLPAddress)
		diags = append(diags, d...)
		if !d.HasErrors() && !validHostPort(t.OTLPAddress) {
			diags = append(diags, attrError(a, "Invalid address", fmt.Sprintf("%q is not host:port (an OTLP/gRPC collector, for example \"otel-collector:4317\").", t.OTLPAddress)))
		}
	}
	if a, ok := content.Attributes["sampling"]; ok {
		d := gohcl.DecodeExpression(a.Expr, nil, &t.Sampling)
		diags = append(diags, d...)
		if !d.HasErrors() && (t.Sampling < 0 || t.Sampling > 100) {
			diags = append(diags, attrError(a, "Invalid sampling", "sampling is the percentage of requests traced, from 0 to 100."))
		}
	}
	return t, diags
}

// validHostPort accepts host:port with a host name or an IP address.
func validHostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return false
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return false
	}
	return net.ParseIP(host) != nil || hostnameRe.MatchString(host)
}
