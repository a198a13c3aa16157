# The Bowline control plane on Nomad: `bowline server`, following Nomad's own
# service catalog (provider = "nomad") and serving xDS to the sidecars, and
# `bowline policyd` (ext_authz, rate limits, access logs, metrics), which the
# sidecars find through its Nomad service "bowline-policyd".
#
#   nomad job run bowline.nomad.hcl
#
# raw_exec runs the `bowline` binary of the client's PATH (a `nomad agent
# -dev` enables raw_exec). On a real cluster use the exec or docker driver
# and an artifact or image instead.

# The configuration directory of both processes: policyd reads the server's
# configuration (the same rules, the same discovery sources), so both tasks
# render this one text. Traffic rules, authorization and services declared
# by hand go in more templates beside it.
locals {
  mesh_config = <<-EOT
    mesh {
      trust_domain = "bowline.local"

      # Where the sidecars reach policyd: the endpoints of the Nomad service
      # of the policyd group below (ext_authz for enforce = "policyd" or
      # "both", global rate limits, access logs).
      policyd {
        service = "bowline-policyd"
      }
    }

    nomad {
      address   = "http://{{ env "attr.unique.network.ip-address" }}:4646"
      namespace = "*"
    }
  EOT
}

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
      template {
        destination = "local/config/mesh.hcl"
        data        = local.mesh_config
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }

  # bowline policyd: stateless, so a group of its own that can be scaled
  # apart from the server (replicas share rate limit counters through Redis:
  # add "--redis-addr", "<host>:6379" to the args).
  group "policyd" {
    count = 1

    network {
      mode = "host"
      # The sidecars find the gRPC port through the "bowline-policyd"
      # service, so it can be dynamic; people find the dashboard, /metrics
      # and /v1/rules on 15021.
      port "grpc" {}
      port "http" {
        static = 15021
      }
    }

    # mesh { policyd { service = "bowline-policyd" } } names this
    # registration: its endpoints (address and gRPC port) are the sidecars'
    # "policyd" cluster.
    service {
      name     = "bowline-policyd"
      provider = "nomad"
      port     = "grpc"
      meta {
        protocol = "grpc"
      }
    }

    task "policyd" {
      driver = "raw_exec"

      config {
        command = "bowline"
        args = [
          "policyd",
          "--config", "${NOMAD_TASK_DIR}/config",
          "--grpc-addr", "0.0.0.0:${NOMAD_PORT_grpc}",
          "--http-addr", "127.0.0.1:${NOMAD_PORT_http}",
          # Denials and audited decisions, as JSON lines, in the task's
          # stdout: nomad alloc logs <alloc> policyd
          "--audit-log", "-",
        ]
      }

      # policyd runs the same discovery sources as the server (to resolve
      # services to the principals the rules name): it needs the same
      # token to read Nomad's services.
      identity {
        env = true
      }

      # The server's configuration, rendered the same way.
      template {
        destination = "local/config/mesh.hcl"
        data        = local.mesh_config
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
