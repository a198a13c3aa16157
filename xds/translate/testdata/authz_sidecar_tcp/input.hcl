# A TCP service enforced by policyd only, mesh-wide (enforce = "policyd"):
# network ext_authz before tcp_proxy, no RBAC, and policyd reached through
# the endpoints of the mesh service "policyd" (a static cluster built from
# the catalog).

mesh {
  trust_domain = "mesh.test"
  enforce      = "policyd"
  policyd {
    service = "ops/policyd"
  }
}

service "db" {
  protocol = "tcp"
  endpoint {
    address      = "10.0.3.1"
    port         = 5432
    sidecar_port = 21000
  }
}

service "policyd" {
  namespace = "ops"
  protocol  = "grpc"
  endpoint {
    address = "10.0.9.1"
    port    = 15020
  }
  endpoint {
    address = "10.0.9.2"
    port    = 15020
  }
}

authorization "db" {
  rule {
    action = "allow"
    from { services = ["web"] }
  }
}

service "web" {
  protocol = "http"
}
