service "orders" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
}

service "frontend" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8081
    sidecar_port = 21001
  }
  upstream "orders" {
    local_port = 9191
  }
}

# The quickstart's two services (examples/quickstart), on ports of their own.

# greeter: two instances. v1 is an xDS-enabled gRPC server: it enforces its
# rules itself (RBAC), but has no rate limit filters. v2 runs behind an Envoy
# sidecar, which enforces both (ratelimits.hcl).
service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 50051
    labels  = { version = "v1" }
  }
  endpoint {
    address      = "127.0.0.1"
    port         = 50052
    sidecar_port = 21003
    labels       = { version = "v2" }
  }
}

# web: a web front end with an Envoy sidecar; it calls greeter through the
# sidecar on 127.0.0.1:9192.
service "web" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8082
    sidecar_port = 21002
    labels       = { version = "v1" }
  }
  upstream "greeter" {
    local_port = 9192
  }
}
