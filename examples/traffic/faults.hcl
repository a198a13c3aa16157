# Chaos testing: delay half of the calls to inventory by 200ms and fail 10%
# of them with UNAVAILABLE, only for requests marked as a test; mirror 20% of
# the real traffic to the new version, whose answers are ignored.

service "inventory" {
  protocol = "grpc"

  endpoint {
    address = "127.0.0.1"
    port    = 50071
    labels  = { version = "v1" }
  }
  endpoint {
    address = "127.0.0.1"
    port    = 50072
    labels  = { version = "v2" }
  }
}

subset "inventory" "v1" {
  labels = { version = "v1" }
}

subset "inventory" "v2" {
  labels = { version = "v2" }
}

route "inventory" {
  rule {
    match {
      header "x-chaos" {
        present = true
      }
    }
    destination {
      subset = "v1"
    }
    fault {
      delay {
        fixed   = "200ms"
        percent = 50
      }
      abort {
        grpc_status = "UNAVAILABLE"
        percent     = 10
      }
    }
  }
  rule {
    destination {
      subset = "v1"
    }
    mirror {
      subset  = "v2"
      percent = 20
    }
  }
}
