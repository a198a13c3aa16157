# orders: frontend may read the API; nobody reaches /api/admin; orders' sidecar
# enforces the rules and asks policyd too (which records every decision).
authorization "orders" {
  namespace = "default"
  enforce   = "both"

  rule {
    action = "allow"
    from { services = ["frontend"] }
    to { methods = ["GET"]  paths = ["/api/*"] }
  }
  rule {
    action = "deny"
    to { paths = ["/api/admin*"] }
  }
  # Trying out a stricter rule: it decides nothing, policyd reports what it
  # would have denied.
  rule {
    action = "deny"
    mode   = "dry-run"
    from { services = ["frontend"] }
    when {
      key     = "request.headers[x-request-id]"
      present = false
    }
  }
}

# greeter: only frontend and web, and only the greeting methods.
authorization "greeter" {
  rule {
    action = "allow"
    from { services = ["frontend", "web"] }
    to { paths = ["/helloworld.Greeter/*"] }
  }
}
