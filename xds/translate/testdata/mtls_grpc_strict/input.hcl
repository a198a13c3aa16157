# Strict mTLS for proxyless gRPC. The proxy is greeter's xDS-enabled gRPC
# server (bootstrapped by `bowline bootstrap grpc --cert-dir`, so its
# bootstrap has the certificate provider "default") and, on the same node, a
# client of billing and ledger:
#   - the listener named by server_listener_resource_name_template: greeter's
#     address, an inline route with non_forwarding_action, and a
#     DownstreamTlsContext that requires a client certificate, all from the
#     certificate provider (gRPC-Go has no SDS);
#   - billing's cluster presents the certificate and accepts only billing's
#     SPIFFE ID; ledger is disabled per service and stays plaintext.

mesh {
  trust_domain = "corp.example"
}

identity {
  mtls = "strict"

  service "ledger" {
    mtls = "disabled"
  }
}

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

service "ledger" {
  protocol = "grpc"
  endpoint {
    address = "10.0.3.1"
    port    = 50051
  }
}
