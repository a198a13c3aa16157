# A proxyless gRPC client in namespace payments asks for every service. It gets
# a listener "<name>.<namespace>" for each service and a bare "<name>" for the
# services of its own namespace (the namespace a bare dial target resolves
# in), and no listener that points at a service that does not exist.

service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.1.1"
    port    = 50051
  }
}

service "ledger" {
  namespace = "payments"
  protocol  = "grpc"
  endpoint {
    address = "10.1.0.1"
    port    = 7000
    region  = "eu-west-1"
    zone    = "eu-west-1b"
  }
}
