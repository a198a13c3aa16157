# Permissive mTLS (the default mode). The web sidecar, with its identity:
#   - its inbound listener tells TLS from plaintext with the TLS inspector:
#     "inbound-mtls" requires a mesh client certificate, "inbound-plaintext"
#     takes plaintext callers;
#   - api (every endpoint has a sidecar, which accepts both) is called over
#     mTLS; greeter (a proxyless gRPC server, which serves plaintext in
#     permissive mode) in plaintext; tcpdb is disabled and plaintext.

identity {
  service "tcpdb" {
    mtls = "disabled"
  }
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
  upstream "tcpdb" {
    local_port = 9003
  }
}

service "api" {
  protocol = "http2"
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

service "tcpdb" {
  protocol = "tcp"
  endpoint {
    address      = "10.0.0.4"
    port         = 5432
    sidecar_port = 21000
  }
}
