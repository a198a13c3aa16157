# "api": a small HTTP service with a Bowline sidecar.
#
#   nomad job run api.nomad.hcl
#
# The group runs the application and, beside it, `bowline envoy` as a
# prestart sidecar task. The service block declares the mesh attributes in
# its meta, which Bowline reads from the job: the protocol, the version
# label and the port of the sidecar's inbound listener (a port label).
job "api" {
  datacenters = ["dc1"]
  type        = "service"

  group "api" {
    count = 1

    network {
      mode = "host"
      port "http" {}        # the application, on 127.0.0.1
      port "sidecar" {}     # the sidecar's inbound listener: mesh traffic enters here
      port "envoy_admin" {} # Envoy's admin interface, on 127.0.0.1
    }

    service {
      name     = "api"
      provider = "nomad"
      port     = "http"
      tags     = ["mesh"]

      meta {
        protocol             = "http"
        version              = "v1"
        bowline-sidecar-port = "sidecar"
      }
    }

    task "app" {
      driver = "raw_exec"

      config {
        command = "python3"
        args    = ["${NOMAD_TASK_DIR}/api.py"]
      }

      template {
        destination = "local/api.py"
        data        = <<-EOT
          import http.server, os

          class Handler(http.server.BaseHTTPRequestHandler):
              def do_GET(self):
                  body = ("hello from api, allocation %s\n" % os.environ["NOMAD_ALLOC_ID"]).encode()
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

      # bowline envoy reads NOMAD_GROUP_NAME (the service), NOMAD_NAMESPACE,
      # NOMAD_ALLOC_ID (the node id) and NOMAD_PORT_sidecar, NOMAD_PORT_http
      # and NOMAD_PORT_envoy_admin, writes the bootstrap into the task
      # directory and execs envoy.
      config {
        command = "bowline"
        args    = ["envoy", "--service", "api", "--", "--use-dynamic-base-id"]
      }

      # Where bowline server's xDS is: its registration in Nomad.
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
