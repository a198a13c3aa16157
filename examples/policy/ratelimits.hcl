# Rate limits for the quickstart services, greeter and web (declared in
# services.hcl as in examples/quickstart), and for orders and frontend
# (docs/policy.md, "Rate limits").
#
# Global limits are counted by bowline policyd (mesh.hcl says where it is)
# across every instance of a service; with several policyd replicas, give
# each the same Redis:
#
#   bowline policyd --config examples/policy --redis-addr 127.0.0.1:6379
#
# Local limits are token buckets in each sidecar, and need no policyd.

# greeter (gRPC): 600 calls a minute per calling service, 10 SayHello calls a
# second per user (the x-user header; a call without it is not counted by
# that limit), 200 calls a second per sidecar. When policyd (or its Redis)
# cannot answer, calls go through. Only greeter's v2 instance, behind an
# Envoy sidecar, enforces these limits: v1 is an xDS-enabled gRPC server,
# which has no rate limit filters (bowline validate warns about each limit).
rate_limit "greeter" {
  on_error = "allow"

  global {
    requests = 600
    per      = "1m"
    by       = ["source.service"]
  }

  global {
    requests = 10
    per      = "1s"
    by       = ["request.headers[\"x-user\"]"]
    match {
      path {
        exact = "/helloworld.Greeter/SayHello"
      }
    }
  }

  local {
    requests = 200
    per      = "1s"
  }
}

# web (HTTP): 3,000 requests an hour per caller (its SPIFFE ID), 5 form posts
# every 10 seconds per path, 500 requests a second per sidecar. When the
# limits cannot be decided, requests are refused.
rate_limit "web" {
  namespace = "default"
  on_error  = "deny"

  global {
    requests = 3000
    per      = "1h"
    by       = ["source.principal"]
  }

  global {
    requests = 5
    per      = "10s"
    by       = ["request.path"]
    match {
      methods = ["POST"]
      path {
        prefix = "/forms/"
      }
    }
  }

  local {
    requests = 500
    per      = "1s"
  }
}

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
