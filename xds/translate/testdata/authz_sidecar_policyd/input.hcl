# orders opts into policyd (enforce = "both"): its inbound HTTP filters are
# the RBAC filters, then ext_authz (place 4) asking policyd's cluster, with
# the destination and the application's port as context extensions on the
# inbound virtual host. The cluster "policyd" reaches the mesh's policyd
# address over HTTP/2. Checks that fail or time out deny (403).

mesh {
  trust_domain = "mesh.test"
  policyd {
    address = "127.0.0.1:15020"
    timeout = "250ms"
  }
}

service "orders" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
}

authorization "orders" {
  enforce = "both"
  rule {
    action = "allow"
    from { services = ["frontend"] }
    to { methods = ["GET"]  paths = ["/api/*"] }
  }
}

service "frontend" {
  protocol = "http"
}
