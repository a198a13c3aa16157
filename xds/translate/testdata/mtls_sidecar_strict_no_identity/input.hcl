# Strict mTLS, but the web sidecar did not prove its identity (no token, or
# a wrong one): it gets no secret. It cannot verify callers, so it has no
# inbound listener at all (nothing is accepted, rather than plaintext); its
# calls go out in plaintext, which strict destinations refuse.

identity {
  mtls = "strict"
}

service "web" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
  upstream "api" {
    local_port = 9001
  }
}

service "api" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.2"
    port         = 8080
    sidecar_port = 21000
  }
}
