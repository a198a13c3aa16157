# bowline server's configuration for the Consul example:
#
#   bowline server --config examples/consul/bowline
#
# Services come from Consul's catalog; rule files may also live in Consul KV
# under kv_prefix (see ../kv).

mesh {
  trust_domain = "bowline.local"   # workloads are spiffe://bowline.local/ns/default/svc/<name>
}

consul {
  address   = "127.0.0.1:8500"     # Consul's HTTP API: the dev agent's default
  kv_prefix = "bowline/config/"    # *.hcl and *.hcl.json keys under it are rule files
  # token      = "..."            # optional; CONSUL_HTTP_TOKEN otherwise
  # datacenter = "dc1"            # optional; the agent's own otherwise
}
