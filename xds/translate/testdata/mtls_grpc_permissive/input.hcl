# Permissive mTLS (the default) for proxyless gRPC: gRPC-Go chooses a
# filter chain before any handshake and cannot tell TLS from plaintext, so
# the server listener has no TLS (the server's fallback credentials serve
# plaintext), and clients call proxyless servers in plaintext.

service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.1.1"
    port    = 50051
  }
}

service "billing" {
  protocol = "grpc"
  endpoint {
    address = "10.0.2.1"
    port    = 50051
  }
}
