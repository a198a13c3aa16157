# Canary: requests with "x-canary: true" go to v2; everything else is split
# 90/10 between v1 and v2. Move the weights to 50/50, then 0/100, to finish
# the rollout; each save reaches the proxies within a second or two.

service "greeter" {
  protocol = "grpc"

  endpoint {
    address = "127.0.0.1"
    port    = 50051
    labels  = { version = "v1" }
  }
  endpoint {
    address = "127.0.0.1"
    port    = 50052
    labels  = { version = "v2" }
  }
}

subset "greeter" "v1" {
  labels = { version = "v1" }
}

subset "greeter" "v2" {
  labels = { version = "v2" }
}

route "greeter" {
  rule {
    match {
      header "x-canary" {
        exact = "true"
      }
    }
    destination {
      subset = "v2"
    }
  }
  rule {
    split {
      subset = "v1"
      weight = 90
    }
    split {
      subset = "v2"
      weight = 10
    }
  }
}
