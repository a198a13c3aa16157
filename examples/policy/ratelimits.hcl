# Rate limits for the quickstart services (docs/policy.md, "Rate limits").
#
# Global limits are counted by bowline policyd (mesh.hcl says where it is)
# across every instance of a service; with several policyd replicas, give
# each the same Redis:
#
#   bowline policyd --config examples/policy --redis-addr 127.0.0.1:6379
#
# Local limits are token buckets in each sidecar, and need no policyd.

# orders: 1,000 requests a minute per calling service, 20 order creations a
# second per caller whatever the service, 100 requests a second per sidecar.
# When policyd (or its Redis) cannot answer, requests go through.
rate_limit "orders" {
  namespace = "default"
  on_error  = "allow"

  global {
    requests = 1000
    per      = "1m"
    by       = ["source.service"]
  }

  global {
    requests = 20
    per      = "1s"
    by       = ["source.principal"]
    match {
      methods = ["POST"]
      path {
        prefix = "/api/orders"
      }
    }
  }

  local {
    requests = 100
    per      = "1s"
  }
}

# frontend: 10,000 requests an hour per tenant (the x-tenant header), and a
# search limit per path. A request without x-tenant is not counted by the
# first limit. When the limits cannot be decided, requests are refused.
rate_limit "frontend" {
  on_error = "deny"

  global {
    requests = 10000
    per      = "1h"
    by       = ["request.headers[\"x-tenant\"]"]
  }

  global {
    requests = 50
    per      = "10s"
    by       = ["request.path"]
    match {
      path {
        prefix = "/search"
      }
    }
  }

  local {
    requests = 500
    per      = "1s"
  }
}

# greeter is an xDS-enabled gRPC server: it has no rate limit filters, so a
# rate_limit block for it would only be enforced by the instances behind an
# Envoy sidecar (bowline validate warns about it).
