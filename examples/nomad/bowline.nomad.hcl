# The Bowline control plane on Nomad: `bowline server`, following Nomad's own
# service catalog (provider = "nomad") and serving xDS to the sidecars.
#
#   nomad job run bowline.nomad.hcl
#
# raw_exec runs the `bowline` binary of the client's PATH (a `nomad agent
# -dev` enables raw_exec). On a real cluster use the exec or docker driver
# and an artifact or image instead.
job "bowline" {
  datacenters = ["dc1"]
  type        = "service"

  group "server" {
    count = 1

    network {
      mode = "host"
      # Static ports: the sidecars find xDS through the "bowline-xds"
      # service, people find the admin API on 15014.
      port "xds" {
        static = 15010
      }
      port "admin" {
        static = 15014
      }
    }

    # The sidecars' template reads this registration to find xDS.
    service {
      name     = "bowline-xds"
      provider = "nomad"
      port     = "xds"
    }

    task "server" {
      driver = "raw_exec"

      config {
        command = "bowline"
        args = [
          "server",
          "--config", "${NOMAD_TASK_DIR}/config",
          "--xds-addr", "0.0.0.0:${NOMAD_PORT_xds}",
          "--admin-addr", "127.0.0.1:${NOMAD_PORT_admin}",
          "--data-dir", "${NOMAD_ALLOC_DIR}/data",
        ]
      }

      # Give the task a Nomad token (Nomad 1.7+ workload identity) that may
      # read the services of its namespace; on a cluster with ACLs, give the
      # job a policy with read-job on every namespace the mesh spans.
      identity {
        env = true
      }

      # The configuration directory: mesh settings and the nomad block.
      # Traffic rules and services declared by hand go in more files here.
      template {
        destination = "local/config/mesh.hcl"
        data        = <<-EOT
          mesh {
            trust_domain = "bowline.local"
          }

          nomad {
            address   = "http://{{ env "attr.unique.network.ip-address" }}:4646"
            namespace = "*"
          }
        EOT
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }

  # group "policyd" { ... }  `bowline policyd` (ext_authz, rate limits,
  # access logs, metrics) joins this job when it ships.
}
