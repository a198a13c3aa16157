# Telemetry for the whole mesh: sidecars log every request to policyd, which
# keeps at most 10,000 label sets, adds a "tenant" label from the x-tenant
# header, and traces 5% of requests to an OpenTelemetry collector.

mesh {
  policyd {
    address = "127.0.0.1:15020"
  }
}

telemetry {
  max_series = 10000

  dimension "tenant" {
    request_header = "x-tenant"
  }

  tracing {
    otlp_address = "127.0.0.1:4317"
    sampling     = 5
  }
}
