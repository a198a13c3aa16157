# payments is a gRPC service behind a sidecar, limited per tenant header;
# policyd runs as a mesh service with two replicas, and the policyd
# cluster lists both. Over-limit calls fail with RESOURCE_EXHAUSTED. The
# default on_error ("allow") lets requests through when policyd does not
# answer. A path-prefix match compiles to a prefix on :path.

mesh {
  policyd {
    service = "policyd"
  }
}

service "policyd" {
  protocol = "grpc"
  endpoint {
    address = "10.0.1.1"
    port    = 15020
  }
  endpoint {
    address = "10.0.1.2"
    port    = 15020
  }
}

service "payments" {
  protocol = "grpc"
  endpoint {
    address      = "10.0.0.20"
    port         = 9090
    sidecar_port = 21001
  }
}

rate_limit "payments" {
  global {
    requests = 50
    per      = "1s"
    by       = ["request.headers[\"x-tenant\"]"]
    match {
      path {
        prefix = "/payments.Payments/"
      }
    }
  }
}
