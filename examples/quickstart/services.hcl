# Services declared by hand: the built-in file registry. Edit and save; the
# server reloads the file and pushes the change to every proxy that uses it.

service "greeter" {
  namespace = "default"   # optional, default "default"
  protocol  = "grpc"

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

# A web front end with an Envoy sidecar: mesh traffic enters on port 21000 and
# reaches the app on 8080; the app calls greeter through the sidecar on
# 127.0.0.1:9191.
service "web" {
  protocol = "http"

  endpoint {
    address      = "127.0.0.1"
    port         = 8080
    sidecar_port = 21000
    labels       = { version = "v1" }
  }

  upstream "greeter" {
    local_port = 9191
  }
}
