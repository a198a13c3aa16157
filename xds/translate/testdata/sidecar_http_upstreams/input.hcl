# The Envoy sidecar of web (an http service): an inbound listener on the
# sidecar port 21000 forwarding to the application on 8080, and outbound
# listeners for its two upstreams, greeter (grpc, on 127.0.0.1:9001) and db
# (tcp, on 127.0.0.1:9002). Ports come from the catalog (proxy.json sets none).

service "web" {
  protocol = "http"

  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }

  upstream "greeter" {
    local_port = 9001
  }
  upstream "db" {
    local_port = 9002
  }
}

service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "10.0.1.1"
    port    = 50051
  }
  endpoint {
    address = "10.0.1.2"
    port    = 50051
  }
}

service "db" {
  protocol = "tcp"
  endpoint {
    address = "10.0.3.1"
    port    = 5432
  }
}
