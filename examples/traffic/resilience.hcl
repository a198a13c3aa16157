# Resilience for calls to the payments service: bounded time, retries on the
# failures that are safe to retry, a circuit breaker, ejection of endpoints
# that keep failing, sticky sessions by user, and failover to the nearest
# locality first.

service "payments" {
  protocol = "grpc"

  endpoint {
    address = "127.0.0.1"
    port    = 50061
    region  = "eu-west"
    zone    = "eu-west-1a"
  }
  endpoint {
    address = "127.0.0.1"
    port    = 50062
    region  = "eu-west"
    zone    = "eu-west-1b"
  }
  endpoint {
    address = "127.0.0.1"
    port    = 50063
    region  = "us-east"
    zone    = "us-east-1a"
  }
}

service_defaults "payments" {
  request_timeout   = "2s"
  locality_failover = true

  retries {
    attempts = 2
    retry_on = ["unavailable", "resource-exhausted"]
  }

  load_balancer {
    policy = "ring_hash"
    hash {
      header = "x-user-id"
    }
  }

  # Envoy sidecars apply all four limits; proxyless gRPC clients only
  # max_requests (bowline validate warns about the others).
  circuit_breaker {
    max_connections      = 100
    max_pending_requests = 50
    max_requests         = 200
    max_retries          = 3
  }

  outlier_detection {
    consecutive_5xx      = 5
    failure_percentage   = 50
    min_requests         = 20
    interval             = "10s"
    base_ejection_time   = "30s"
    max_ejection_percent = 50
  }
}

route "payments" {
  # Refunds are slow: give them more time.
  rule {
    match {
      path {
        prefix = "/payments.Payments/Refund"
      }
    }
    timeout = "10s"
  }
}
