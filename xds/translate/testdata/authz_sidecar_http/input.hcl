# Authorization enforced in an Envoy sidecar (enforce = "proxy", the
# default): orders' inbound listener gets, in place 3 of the HTTP filters,
#   - a DENY RBAC filter with the deny rule, and as shadow rules the deny
#     rules plus the dry-run deny rule;
#   - an ALLOW RBAC filter with the allow rules (the issue's rule, whose
#     services are the principals of frontend: its SPIFFE ID, plus on
#     Kubernetes its service accounts; a namespace pattern with a header
#     condition).
# Port rules are decided here: the application's port is 8080.

mesh {
  trust_domain = "mesh.test"
}

service "orders" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
}

service "frontend" {
  protocol = "http"
  endpoint {
    address = "10.0.0.20"
    port    = 8080
  }
}

authorization "orders" {
  namespace = "default"
  rule {
    action = "allow"
    from { services = ["frontend"] }
    to { methods = ["GET"]  paths = ["/api/*"] }
  }
  rule {
    action = "allow"
    from { namespaces = ["ops-*"] }
    to { ports = [8080] }
    to { not_ports = [8080] }
    when {
      key    = "request.headers[x-ops-token]"
      values = ["*"]
    }
  }
  rule {
    action = "deny"
    to { paths = ["/admin*"]  not_hosts = ["*.internal"] }
  }
  rule {
    action = "deny"
    mode   = "dry-run"
    from { not_principals = ["spiffe://mesh.test/*"] }
  }
}
