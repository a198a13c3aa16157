# Every block and attribute of the file registry, as the docs show it.
mesh {
  trust_domain = "mesh.example.com"
}

consul {
  address    = "consul.service:8500"
  datacenter = "dc1"
  kv_prefix  = "bowline/config"
}

service "greeter" {
  namespace = "default"   # optional, default "default"
  protocol  = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 50051
    labels  = { version = "v1" }
  }
}

service "frontend" {
  namespace = "shop"
  protocol  = "http"
  labels    = { team = "web", tier = "edge" }

  endpoint {
    address      = "10.0.0.1"
    port         = 8080
    labels       = { version = "v1", canary = false, shard = 3 }
    health       = "degraded"
    sidecar_port = 21000
    region       = "eu-west"
    zone         = "eu-west-1a"
    weight       = 10
  }
  endpoint {
    address = "frontend-2.internal"
    port    = 8080
  }

  upstream "greeter" {
    namespace  = "default"
    local_port = 9001
  }
  upstream "billing/invoices" {
    local_port = 9002
  }
  upstream "cart" {
    local_port = 9003
  }
}
