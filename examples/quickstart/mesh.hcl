# Mesh-wide settings.
mesh {
  trust_domain = "bowline.local"
}
