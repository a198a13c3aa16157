# orders has the three kinds of limit. Its inbound HTTP filters get, in
# order: the local rate limit filter (place 5: a bucket of 100 tokens
# refilled every second), header_to_metadata (the caller's identity, cut
# out of x-forwarded-client-cert, which the connection manager now sets
# with SANITIZE_SET) and the rate limit filter (place 6) asking policyd in
# domain "bowline". The inbound route carries one action list per global
# block: destination = default/orders (a header value match for the block
# with a match), then its by attributes in order. on_error = "deny":
# failure_mode_deny, with 503 when policyd does not answer.

mesh {
  trust_domain = "mesh.test"
  policyd {
    address = "127.0.0.1:15020"
    timeout = "100ms"
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

rate_limit "orders" {
  on_error = "deny"
  global {
    requests = 1000
    per      = "1m"
    by       = ["source.service"]
  }
  global {
    requests = 10
    per      = "10s"
    by       = ["source.principal", "request.headers[\"x-tenant\"]", "request.path"]
    match {
      methods = ["POST", "PUT"]
      path {
        exact = "/orders"
      }
      header "x-debug" {
        present = true
        invert  = true
      }
    }
  }
  local {
    requests = 100
    per      = "1s"
  }
}
