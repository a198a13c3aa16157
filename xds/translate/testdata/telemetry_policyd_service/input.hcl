# Telemetry with no telemetry block (the defaults: enabled) and policyd
# found as a mesh service: the "policyd" cluster lists the service's
# endpoints. db is a TCP service: its inbound TCP proxy logs with the TCP
# gRPC access logger (bowline_inbound), flushing when the upstream
# connection is established. No tracing block: no tracer.

mesh {
  policyd {
    service = "bowline-policyd"
  }
}

service "bowline-policyd" {
  protocol = "grpc"
  endpoint {
    address = "10.0.9.1"
    port    = 15020
  }
  endpoint {
    address = "10.0.9.2"
    port    = 15020
  }
}

service "db" {
  protocol = "tcp"
  endpoint {
    address      = "10.0.3.1"
    port         = 5432
    sidecar_port = 21000
  }
}
