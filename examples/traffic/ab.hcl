# A/B testing on an HTTP service: group "b" (by header) sees the new
# storefront, everyone else the old one. The API is versioned by path, old
# paths redirect, and a header tells the backend which arm served.

service "shop" {
  protocol = "http"

  endpoint {
    address = "127.0.0.1"
    port    = 8081
    labels  = { version = "a" }
  }
  endpoint {
    address = "127.0.0.1"
    port    = 8082
    labels  = { version = "b" }
  }
}

subset "shop" "a" {
  labels = { version = "a" }
}

subset "shop" "b" {
  labels = { version = "b" }
}

route "shop" {
  # Old links keep working.
  rule {
    match {
      path {
        prefix = "/store/"
      }
    }
    redirect {
      prefix = "/shop/"
      code   = 301
    }
  }

  # The v2 API is served by arm b, under the path its code expects.
  rule {
    match {
      path {
        prefix = "/api/v2/"
      }
      methods = ["GET", "POST"]
    }
    destination {
      subset = "b"
    }
    rewrite {
      prefix = "/api/"
    }
    timeout = "3s"
  }

  rule {
    match {
      header "x-group" {
        exact = "b"
      }
    }
    destination {
      subset = "b"
    }
    request_headers {
      set = { "x-arm" = "b" }
    }
  }

  rule {
    destination {
      subset = "a"
    }
    request_headers {
      set = { "x-arm" = "a" }
    }
    response_headers {
      remove = ["x-powered-by"]
    }
  }
}
