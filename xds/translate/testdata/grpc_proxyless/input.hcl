# A proxyless gRPC client (default/client) dials xds:///greeter and
# xds:///greeter.default; both name default/greeter.
#   - 10.0.1.1 is healthy and has a locality (weight 2),
#   - 10.0.1.2 is degraded: priority 1, used when the healthy ones cannot cope,
#   - 10.0.1.3 is unhealthy: left out.
# billing is not dialled and must not appear.

service "greeter" {
  protocol = "grpc"
  labels   = { app = "greeter" }

  endpoint {
    address = "10.0.1.1"
    port    = 50051
    region  = "eu-west-1"
    zone    = "eu-west-1a"
    weight  = 2
    labels  = { version = "v1" }
  }
  endpoint {
    address = "10.0.1.2"
    port    = 50051
    health  = "degraded"
  }
  endpoint {
    address = "10.0.1.3"
    port    = 50051
    health  = "unhealthy"
  }
}

service "client" {
  protocol = "grpc"
  endpoint {
    address = "10.0.9.1"
    port    = 8080
  }
}

service "billing" {
  protocol = "http"
  endpoint {
    address = "10.0.2.1"
    port    = 8080
  }
}
