# The RBAC of greeter's xDS-enabled gRPC server (gRPC-Go enforces RBAC and
# has no ext_authz, so it always enforces itself):
#   - ports are matched by gRPC (destination_port);
#   - the allow rule that needs a JWT claim can never match on a gRPC server
#     (it has no JWT filter), so it is left out while the ALLOW filter stays;
#   - the deny rule's claim condition is dropped: it denies more widely.

mesh {
  trust_domain = "mesh.test"
}

service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.1.1"
    port    = 50051
  }
}

service "client" {
  protocol = "grpc"
}

authorization "greeter" {
  rule {
    action = "allow"
    from { services = ["client"] }
    to { paths = ["/grpc.testing.TestService/*"]  ports = [50051] }
  }
  rule {
    action = "allow"
    when {
      key    = "request.auth.claims[group]"
      values = ["admins"]
    }
  }
  rule {
    action = "deny"
    from { not_namespaces = ["default"] }
    when {
      key    = "request.auth.claims[group]"
      values = ["guests"]
    }
  }
}
