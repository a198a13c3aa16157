# default_deny with no rule for web: its inbound listener gets an ALLOW RBAC
# filter without policies, which denies every request.

mesh {
  default_deny = true
}

service "web" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
}
