# Request matching and per-rule actions on an HTTP storefront catalog. The
# first rule whose match applies decides, so the specific rules come first and
# the catch-all last:
#
#   - an old page answers with a redirect to the public HTTPS site;
#   - review pages, matched by a path regex, moved to their own service;
#   - QA accounts (a header regex) asking for the new catalog (a query
#     parameter) reach the catalog-next service;
#   - a chaos query parameter fails half of the calls with HTTP 503, so that
#     the client's error handling can be tried;
#   - search gets a short budget with fast retries;
#   - API clients (anything that is not a browser) are split 80/20 between
#     catalog v2 and the catalog-next service;
#   - everything else goes to catalog v1.

service "catalog" {
  protocol = "http"

  endpoint {
    address = "127.0.0.1"
    port    = 8091
    labels  = { version = "v1" }
  }
  endpoint {
    address = "127.0.0.1"
    port    = 8092
    labels  = { version = "v2" }
  }
}

# The rewrite of the catalog, deployed as a separate service.
service "catalog-next" {
  protocol = "http"

  endpoint {
    address = "127.0.0.1"
    port    = 8093
  }
}

service "reviews" {
  protocol = "http"

  endpoint {
    address = "127.0.0.1"
    port    = 8094
  }
}

subset "catalog" "v1" {
  labels = { version = "v1" }
}

subset "catalog" "v2" {
  labels = { version = "v2" }
}

route "catalog" {
  # The old browse page moved to the public site: redirect to it over HTTPS.
  rule {
    match {
      path {
        exact = "/browse"
      }
    }
    redirect {
      https = true
      host  = "shop.example.com"
      path  = "/catalog/"
      code  = 308
    }
  }

  # /items/<id>/reviews is served by the reviews service, which expects its
  # own Host header.
  rule {
    match {
      path {
        regex = "^/items/[0-9]+/reviews$"
      }
      methods = ["GET"]
    }
    destination {
      service = "reviews"
    }
    rewrite {
      host = "reviews.internal"
    }
  }

  # QA accounts that ask for the new catalog with ?catalog=next get it; the
  # backend sees that the mesh routed the call.
  rule {
    match {
      header "x-user-id" {
        regex = "^qa-[0-9]+$"
      }
      query "catalog" {
        exact = "next"
      }
    }
    destination {
      service = "catalog-next"
    }
    request_headers {
      add = { "x-routed-by" = "bowline" }
    }
  }

  # ?chaos (any value) fails half of the calls, for client error-handling tests.
  rule {
    match {
      query "chaos" {
        present = true
      }
    }
    destination {
      subset = "v1"
    }
    fault {
      abort {
        http_status = 503
        percent     = 50
      }
    }
  }

  # Search must answer within a second: up to three quick retries, each
  # given 250ms.
  rule {
    match {
      path {
        prefix = "/search"
      }
    }
    destination {
      subset = "v1"
    }
    timeout = "1s"
    retries {
      attempts        = 3
      per_try_timeout = "250ms"
      retry_on        = ["5xx", "reset", "connect-failure"]
    }
  }

  # API clients (no browser user agent) try the new versions: 80% to catalog
  # v2, 20% to the catalog-next service.
  rule {
    match {
      header "user-agent" {
        prefix = "Mozilla/"
        invert = true
      }
    }
    split {
      subset = "v2"
      weight = 80
    }
    split {
      service = "catalog-next"
      weight  = 20
    }
  }

  rule {
    destination {
      subset = "v1"
    }
  }
}
