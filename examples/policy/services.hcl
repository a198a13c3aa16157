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

service "greeter" {
  protocol = "grpc" # an xDS-enabled gRPC server: it enforces its rules itself (RBAC)
  endpoint {
    address = "127.0.0.1"
    port    = 50051
  }
}
