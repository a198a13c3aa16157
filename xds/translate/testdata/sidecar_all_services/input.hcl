# The sidecar of web asks for every service of the mesh (all_services): it gets
# a cluster, endpoints and a route configuration for each, including those in
# other namespaces and web itself, but outbound listeners only for the
# upstreams it declares (here: proxy.json adds cache on 9003). The inbound
# ports are given by the proxy (inbound 15006, application 3000), overriding
# the catalog.

service "web" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
}

service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.1.1"
    port    = 50051
  }
}

service "cache" {
  protocol = "tcp"
  endpoint {
    address = "10.0.5.1"
    port    = 6379
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
