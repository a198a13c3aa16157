# Consul service definition of web, an HTTP service with an Envoy sidecar that
# calls api:
#
#   consul services register services/web.hcl
#
# The application listens on 127.0.0.1:8080 and calls api on 127.0.0.1:9191,
# the local port of its sidecar's upstream; mesh traffic to web enters through
# its sidecar on port 21000.

service {
  id   = "web-1"
  name = "web"
  port = 8080

  meta = {
    protocol = "http"
    version  = "v1"
  }

  check {
    id       = "web-http"
    name     = "web answers HTTP"
    http     = "http://127.0.0.1:8080/"
    interval = "5s"
  }

  connect {
    sidecar_service {
      port = 21000

      proxy {
        upstreams {
          destination_name = "api"
          local_bind_port  = 9191
        }
      }
    }
  }
}
