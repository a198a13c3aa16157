package main

import (
	"cmp"
	"strings"

	"github.com/bowlinemesh/bowline/xds/bootstrap"
)

// otelResourceEnv is read by the environment resource detector of Envoy's
// OpenTelemetry tracer, which the telemetry block's tracing configures
// (xds/translate accesslog.go): it names the workload in its spans, since
// the tracer's configuration is shared between workloads.
const otelResourceEnv = "OTEL_RESOURCE_ATTRIBUTES"

// envoyEnv is Envoy's environment: ours, with OTEL_RESOURCE_ATTRIBUTES
// naming the workload unless it is set already.
func envoyEnv(env []string, o bootstrap.Options) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, otelResourceEnv+"=") {
			return env
		}
	}
	ns := cmp.Or(o.Namespace, "default")
	attrs := "service.name=" + o.Service + "." + ns + ",service.namespace=" + ns
	if o.Version != "" {
		attrs += ",service.version=" + o.Version
	}
	return append(env, otelResourceEnv+"="+attrs)
}
