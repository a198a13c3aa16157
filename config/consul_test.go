package config_test

import (
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/config"
)

func TestConsulMaxConns(t *testing.T) {
	for src, want := range map[string]int{
		"consul {}":                      0,
		"consul {\n  max_conns = 400\n}": 400,
		"consul {\n  max_conns = -1\n}":  -1,
		"consul {\n  max_conns = 2\n}":   2,
	} {
		cfg := parse(t, config.File{Name: "consul.hcl", Content: []byte(src)})
		if cfg.Consul == nil || cfg.Consul.MaxConns != want {
			t.Errorf("%q: consul = %+v, want MaxConns %d", src, cfg.Consul, want)
		}
	}
	for _, bad := range []string{"1", "-2", "\"many\"", "1.5"} {
		src := "consul {\n  max_conns = " + bad + "\n}\n"
		_, diags := config.Parse([]config.File{{Name: "consul.hcl", Content: []byte(src)}})
		if !diags.HasErrors() {
			t.Errorf("max_conns = %s: no error", bad)
			continue
		}
		d := diags[0]
		if d.Subject == nil || d.Subject.Filename != "consul.hcl" || d.Subject.Start.Line != 2 {
			t.Errorf("max_conns = %s: diagnostic %s not on consul.hcl line 2", bad, d)
		}
		if bad == "1" && !strings.Contains(d.Summary, "max_conns") {
			t.Errorf("max_conns = 1: summary %q", d.Summary)
		}
	}
}
