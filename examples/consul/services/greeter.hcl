# Consul service definition of greeter, a gRPC service called by proxyless
# gRPC clients (no sidecar: the clients get the mesh configuration over xDS
# themselves and dial the endpoints directly):
#
#   consul services register services/greeter.hcl

service {
  id   = "greeter-1"
  name = "greeter"
  port = 50051

  meta = {
    protocol = "grpc"
    version  = "v1"
  }

  check {
    id       = "greeter-tcp"
    name     = "greeter accepts connections"
    tcp      = "127.0.0.1:50051"
    interval = "5s"
  }
}
