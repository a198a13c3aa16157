# Consul service definition of api, an HTTP service with an Envoy sidecar:
#
#   consul services register services/api.hcl
#
# The application listens on 127.0.0.1:9090; mesh traffic to api enters
# through its sidecar on port 21001.

service {
  id   = "api-1"
  name = "api"
  port = 9090

  meta = {
    protocol = "http"   # http, http2, grpc or tcp: how the mesh routes to api
    version  = "v1"     # an endpoint label; subset blocks select on labels
  }

  check {
    id       = "api-http"
    name     = "api answers HTTP"
    http     = "http://127.0.0.1:9090/"
    interval = "5s"
  }

  connect {
    sidecar_service {
      port = 21001      # the sidecar's inbound listener (Envoy, programmed by bowline)
    }
  }
}
