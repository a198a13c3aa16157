# End-user authentication for orders: two issuers with their key sets (the
# second reads its token from x-jwt-assertion and forwards it). The inbound
# HTTP filters are jwt_authn (place 2: a token from either issuer, else 401;
# the payload in dynamic metadata), then the RBAC filters, whose claim
# condition matches the payload's "group", a string or a list. (Key sets
# fetched over HTTPS, jwks_uri, are in authz_test.go.)

mesh {
  trust_domain = "mesh.test"
}

service "orders" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
}

jwt "orders" {
  issuer    = "https://issuer.test"
  audiences = ["orders"]
  jwks      = "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"k1\",\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\",\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}]}"
}

jwt "orders" {
  issuer = "https://auth.example.com"
  jwks   = "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"hs\",\"k\":\"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA\"}]}"
  from_header "x-jwt-assertion" {}
  forward = true
}

authorization "orders" {
  rule {
    action = "allow"
    to { paths = ["/api/*"] }
    when {
      key    = "request.auth.claims[group]"
      values = ["admins", "ops-*"]
    }
  }
}
