# The mesh: its trust domain, and where sidecars reach bowline policyd
#
#   bowline server  --config examples/policy
#   bowline policyd --config examples/policy --grpc-addr 127.0.0.1:15020 --http-addr 127.0.0.1:15021
mesh {
  trust_domain = "mesh.test"
  default_deny = false   # true: nothing passes that no allow rule admits
  enforce      = "proxy" # RBAC in every destination's proxy, unless a service says otherwise

  policyd {
    address = "127.0.0.1:15020"
    timeout = "200ms"
  }
}
