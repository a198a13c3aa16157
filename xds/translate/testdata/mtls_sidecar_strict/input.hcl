# Strict mTLS, mesh-wide. The web sidecar (which proved its identity) gets:
#   - an inbound listener that requires a client certificate from the mesh
#     bundle (SDS secrets "default" and "ROOTCA" over ADS),
#   - clusters that present its certificate and verify the upstream's SPIFFE
#     ID (api: its endpoints' identity; greeter, a proxyless gRPC server:
#     the service's identity),
#   - exactly two secrets: its own certificate and the trust bundle.

identity {
  mtls = "strict"
}

service "web" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
  upstream "api" {
    local_port = 9001
  }
  upstream "greeter" {
    local_port = 9002
  }
}

service "api" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.2"
    port         = 8080
    sidecar_port = 21000
  }
}

service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.0.3"
    port    = 50051
  }
}
