# Load balancing, one service per policy:
#
#   - search:          least request, for requests of very uneven cost;
#   - thumbnails:      random, cheap and stateless;
#   - cart:            ring hash on a session cookie, so that a shopper's
#                      calls land on the endpoint that has the cart cached;
#   - rate-counter:    maglev on the caller's IP address, a consistent hash
#                      that moves few keys when endpoints come and go;
#   - recommendations: a gRPC service with least request, which proxyless
#                      gRPC clients apply too.
#
# Envoy sidecars apply all of these. Proxyless gRPC clients use round robin
# for random, ring hash for maglev, and hash on headers only; for a service
# declared with protocol = "grpc", bowline validate warns about those.

service "search" {
  protocol = "http"

  endpoint {
    address = "127.0.0.1"
    port    = 8101
  }
  endpoint {
    address = "127.0.0.1"
    port    = 8102
  }
}

service_defaults "search" {
  load_balancer {
    policy       = "least_request"
    choice_count = 3 # compare three random endpoints instead of two
  }
}

service "thumbnails" {
  protocol = "http"

  endpoint {
    address = "127.0.0.1"
    port    = 8111
  }
  endpoint {
    address = "127.0.0.1"
    port    = 8112
  }
}

service_defaults "thumbnails" {
  load_balancer {
    policy = "random"
  }
}

service "cart" {
  protocol = "http"

  endpoint {
    address = "127.0.0.1"
    port    = 8121
  }
  endpoint {
    address = "127.0.0.1"
    port    = 8122
  }
}

service_defaults "cart" {
  load_balancer {
    policy = "ring_hash"
    hash {
      cookie     = "cart-session"
      cookie_ttl = "1h" # Envoy sets the cookie when the request has none
    }
    min_ring_size = 1024
    max_ring_size = 8192
  }
}

service "rate-counter" {
  protocol = "http"

  endpoint {
    address = "127.0.0.1"
    port    = 8131
  }
  endpoint {
    address = "127.0.0.1"
    port    = 8132
  }
}

service_defaults "rate-counter" {
  load_balancer {
    policy = "maglev"
    hash {
      source_ip = true
    }
  }
}

service "recommendations" {
  protocol = "grpc"

  endpoint {
    address = "127.0.0.1"
    port    = 50141
  }
  endpoint {
    address = "127.0.0.1"
    port    = 50142
  }
}

service_defaults "recommendations" {
  load_balancer {
    policy = "least_request"
  }
}
