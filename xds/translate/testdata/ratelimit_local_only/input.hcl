# A local limit needs no policyd: web's sidecar gets the local rate limit
# filter alone, and no policyd cluster. The global limit is left out, as
# the mesh names no policyd (config warns).

service "web" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.30"
    port         = 8080
    sidecar_port = 21002
  }
}

rate_limit "web" {
  global {
    requests = 5
    per      = "1h"
  }
  local {
    requests = 20
    per      = "1m"
  }
}
