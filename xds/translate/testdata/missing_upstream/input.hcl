# web declares an upstream, ghost, that no registry knows, and proxy.json adds
# another, payments/phantom. Each gets an EDS cluster with an empty load
# assignment (tcp until the service appears), so that the listeners stay
# valid and the resources stay consistent.

service "web" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
  upstream "ghost" {
    local_port = 9100
  }
}
