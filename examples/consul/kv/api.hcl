# Rules for calls to api, kept in Consul KV instead of bowline's config
# directory:
#
#   consul kv put bowline/config/api.hcl @kv/api.hcl
#
# bowline server follows the key (blocking queries): a change reaches the
# sidecars within a moment, and an invalid version is rejected with
# diagnostics naming consul-kv:bowline/config/api.hcl:LINE:COLUMN while the
# last valid one keeps serving.

service_defaults "api" {
  request_timeout = "3s"

  retries {
    attempts = 2
    retry_on = ["connect-failure", "5xx"]
  }
}
