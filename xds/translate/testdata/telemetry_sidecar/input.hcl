# Telemetry on a sidecar (docs/telemetry.md): every connection manager and
# TCP proxy, inbound and outbound, logs to policyd's access log service over
# the "policyd" cluster (ALS v3, gRPC, buffered 16 KiB / 1s). The inbound
# logs are named bowline_inbound, the outbound ones bowline_outbound (with
# the upstream's certificate URI SAN as a custom tag). The request headers
# logged are content-type and the tenant dimension's x-tenant; the response
# header and trailer grpc-status. TCP proxies also log when the upstream
# connection is established. The tracing block adds the OpenTelemetry
# tracer (10% of requests) exporting to the "opentelemetry_collector"
# cluster; the inbound tracer names the workload (web.default).

mesh {
  trust_domain = "mesh.test"
  policyd {
    address = "127.0.0.1:15020"
  }
}

telemetry {
  max_series = 5000
  dimension "tenant" {
    request_header = "x-tenant"
  }
  tracing {
    otlp_address = "otel-collector.internal:4317"
    sampling     = 10
  }
}

service "web" {
  protocol = "http"

  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }

  upstream "greeter" {
    local_port = 9001
  }
  upstream "db" {
    local_port = 9002
  }
}

service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.1.1"
    port    = 50051
  }
}

service "db" {
  protocol = "tcp"
  endpoint {
    address = "10.0.3.1"
    port    = 5432
  }
}
