# Mutual TLS between proxyless gRPC workloads: greeter is an xDS-enabled gRPC
# server, client calls it over xds:///greeter. See README.md and
# docs/identity.md.

mesh {
  trust_domain = "bowline.local"
}

identity {
  mtls     = "strict" # strict | permissive | disabled
  cert_ttl = "24h"    # reissued at half-life

  # Each workload proves its identity with its service's join token before it
  # gets a certificate. Replace these with `openssl rand -hex 32`.
  join_token "greeter" {
    token = "greeter-example-token-change-me"
  }
  join_token "client" {
    token = "client-example-token-change-me"
  }

  # Platforms' own proofs, when the workloads run there (docs/identity.md):
  # attest {
  #   consul {}                  # Consul ACL tokens with service:write
  #   nomad { audience = "bowline" }   # Nomad workload identities
  #   kubernetes { audiences = ["bowline"] }   # service account tokens
  # }
}

service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 50051
  }
}
