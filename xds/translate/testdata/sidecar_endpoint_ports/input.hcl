# api's instances: two run a sidecar (inbound port 21000 and 21001), one does
# not. EDS must send the sidecar port where there is one (mesh traffic enters
# through the destination's sidecar) and the application port otherwise.

service "frontend" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.20"
    port         = 8080
    sidecar_port = 21000
  }
  upstream "api" {
    local_port = 9200
  }
}

service "api" {
  protocol = "http"
  endpoint {
    address      = "10.0.4.1"
    port         = 8080
    sidecar_port = 21000
    region       = "us-east-1"
    zone         = "us-east-1a"
  }
  endpoint {
    address      = "10.0.4.2"
    port         = 8080
    sidecar_port = 21001
    region       = "us-east-1"
    zone         = "us-east-1a"
  }
  endpoint {
    address = "10.0.4.3"
    port    = 8081
    region  = "us-east-1"
    zone    = "us-east-1b"
  }
}
