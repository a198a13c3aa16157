# "web": calls "api" through the mesh.
#
#   nomad job run web.nomad.hcl
#
# The application calls http://127.0.0.1:9191/, the local port of its
# upstream "api"; its sidecar listens there and sends the call to an api
# instance's sidecar. With host networking each upstream's local port is a
# port of the host, so run one web allocation per client node, or use
# network { mode = "bridge" } (CNI plugins needed) to give every allocation
# its own loopback.
job "web" {
  datacenters = ["dc1"]
  type        = "service"

  group "web" {
    count = 1

    network {
      mode = "host"
      port "http" {}
      port "sidecar" {}
      port "envoy_admin" {}
    }

    service {
      name     = "web"
      provider = "nomad"
      port     = "http"

      meta {
        protocol             = "http"
        version              = "v1"
        bowline-sidecar-port = "sidecar"
        bowline-upstreams    = "api:9191"
      }
    }

    task "app" {
      driver = "raw_exec"

      config {
        command = "python3"
        args    = ["${NOMAD_TASK_DIR}/web.py"]
      }

      template {
        destination = "local/web.py"
        data        = <<-EOT
          import http.server, os, urllib.request

          class Handler(http.server.BaseHTTPRequestHandler):
              def do_GET(self):
                  # The upstream's local port: the sidecar takes it from here.
                  answer = urllib.request.urlopen("http://127.0.0.1:9191/", timeout=5).read()
                  body = b"web -> mesh -> " + answer
                  self.send_response(200)
                  self.send_header("Content-Length", str(len(body)))
                  self.end_headers()
                  self.wfile.write(body)

          http.server.HTTPServer(("127.0.0.1", int(os.environ["NOMAD_PORT_http"])), Handler).serve_forever()
        EOT
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }

    task "sidecar" {
      driver = "raw_exec"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        command = "bowline"
        args    = ["envoy", "--service", "web", "--", "--use-dynamic-base-id"]
      }

      template {
        destination = "local/bowline.env"
        env         = true
        data        = <<-EOT
          {{ range nomadService "bowline-xds" }}BOWLINE_XDS_ADDR={{ .Address }}:{{ .Port }}{{ end }}
        EOT
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
