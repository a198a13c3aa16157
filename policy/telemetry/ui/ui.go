// Package ui is policyd's dashboard: one hand-written page (HTML, CSS and
// JavaScript, embedded; no build step, nothing fetched from elsewhere) that
// draws the service graph with live numbers on its edges, the golden
// signals of every service over the last minutes and the recent denials.
// It polls GET /v1/graph and GET /v1/signals (package telemetry) and keeps
// polling through policyd restarts.
package ui

import (
	"embed"
	"net/http"
	"path"
	"strings"
)

//go:embed assets
var assets embed.FS

var types = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".svg":  "image/svg+xml",
}

// Handler serves the page at / and its files under /ui/.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := "index.html"
		if r.URL.Path != "/" {
			rest, ok := strings.CutPrefix(r.URL.Path, "/ui/")
			if !ok || rest == "" || strings.Contains(rest, "..") {
				http.NotFound(w, r)
				return
			}
			name = rest
		}
		b, err := assets.ReadFile("assets/" + name)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if t, ok := types[path.Ext(name)]; ok {
			w.Header().Set("Content-Type", t)
		}
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'")
		_, _ = w.Write(b)
	})
}
