# checkout lives in namespace payments. Its upstream ledger (no namespace)
# resolves in payments; default/audit is in another namespace. Resource names
# carry the namespace (payments/ledger, default/audit), and a default/ledger
# that exists too must not be picked.

service "checkout" {
  namespace = "payments"
  protocol  = "grpc"
  endpoint {
    address      = "10.1.0.5"
    port         = 50051
    sidecar_port = 21000
  }
  upstream "ledger" {
    local_port = 9300
  }
  upstream "default/audit" {
    local_port = 9301
  }
}

service "ledger" {
  namespace = "payments"
  protocol  = "http2"
  endpoint {
    address = "10.1.0.1"
    port    = 7000
  }
}

service "ledger" {
  protocol = "http"
  endpoint {
    address = "10.0.7.1"
    port    = 7000
  }
}

service "audit" {
  protocol = "http"
  endpoint {
    address = "10.0.8.1"
    port    = 8080
  }
}
