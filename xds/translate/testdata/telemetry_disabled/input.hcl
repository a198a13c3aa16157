# telemetry { enabled = false }: no access log at all, and no policyd
# cluster (nothing else here asks policyd), although the mesh says where
# policyd is. Compare with telemetry_sidecar.

mesh {
  policyd {
    address = "127.0.0.1:15020"
  }
}

telemetry {
  enabled = false
}

service "web" {
  protocol = "http"

  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }

  upstream "db" {
    local_port = 9002
  }
}

service "db" {
  protocol = "tcp"
  endpoint {
    address = "10.0.3.1"
    port    = 5432
  }
}
