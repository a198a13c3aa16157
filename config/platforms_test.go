package config_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/config"
)

// The nomad block: what each attribute decodes to, and the defaults.
func TestPlatformNomadBlock(t *testing.T) {
	tests := []struct {
		name    string
		env     string // NOMAD_ADDR
		src     string
		want    config.NomadDecl // DeclRange not compared
		wantRng int              // line of the block
	}{
		{
			name: "defaults",
			src:  "nomad {}\n",
			want: config.NomadDecl{Address: "http://127.0.0.1:4646", Namespace: "*"},
		},
		{
			name: "address from NOMAD_ADDR when the block sets none",
			env:  "https://nomad.service.consul:4646",
			src:  "nomad {\n  token = \"t\"\n}\n",
			want: config.NomadDecl{Address: "https://nomad.service.consul:4646", Token: "t", Namespace: "*"},
		},
		{
			name: "the block's address wins over NOMAD_ADDR",
			env:  "https://nomad.service.consul:4646",
			src:  "nomad {\n  address = \"http://10.0.0.5:4646\"\n}\n",
			want: config.NomadDecl{Address: "http://10.0.0.5:4646", Namespace: "*"},
		},
		{
			name: "every attribute",
			src: `# comment
mesh {}

nomad {
  address   = "https://nomad.example:4646"
  token     = "8f0c6e1a-secret"
  namespace = "prod"
  region    = "eu"
  ca_file   = "/etc/nomad.d/ca.pem"
  cert_file = "/etc/nomad.d/client.pem"
  key_file  = "/etc/nomad.d/client-key.pem"
}
`,
			want: config.NomadDecl{
				Address: "https://nomad.example:4646", Token: "8f0c6e1a-secret", Namespace: "prod", Region: "eu",
				CAFile: "/etc/nomad.d/ca.pem", CertFile: "/etc/nomad.d/client.pem", KeyFile: "/etc/nomad.d/client-key.pem",
			},
			wantRng: 4,
		},
		{
			name: "a CA file alone (no client certificate)",
			src:  "nomad {\n  ca_file = \"ca.pem\"\n}\n",
			want: config.NomadDecl{Address: "http://127.0.0.1:4646", Namespace: "*", CAFile: "ca.pem"},
		},
		{
			name: "namespace * explicitly",
			src:  "nomad {\n  namespace = \"*\"\n}\n",
			want: config.NomadDecl{Address: "http://127.0.0.1:4646", Namespace: "*"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NOMAD_ADDR", tt.env)
			cfg := parse(t, file("nomad.hcl", tt.src))
			if cfg.Nomad == nil {
				t.Fatal("no nomad block decoded")
			}
			got := *cfg.Nomad
			if got.DeclRange.Filename != "nomad.hcl" || got.DeclRange.Start.Line != max(tt.wantRng, 1) {
				t.Errorf("DeclRange = %s, want nomad.hcl:%d", got.DeclRange, max(tt.wantRng, 1))
			}
			got.DeclRange = tt.want.DeclRange
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("nomad block:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
	t.Run("no block, no adapter", func(t *testing.T) {
		t.Setenv("NOMAD_ADDR", "http://10.0.0.1:4646")
		if cfg := parse(t, file("mesh.hcl", "mesh {}\n")); cfg.Nomad != nil {
			t.Errorf("Nomad = %+v without a nomad block", cfg.Nomad)
		}
	})
}

// The kubernetes block: kubeconfig and namespaces.
func TestPlatformKubernetesBlock(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want config.KubernetesDecl
	}{
		{"in-cluster, every namespace", "kubernetes {}\n", config.KubernetesDecl{}},
		{"kubeconfig", "kubernetes {\n  kubeconfig = \"~/.kube/config\"\n}\n", config.KubernetesDecl{Kubeconfig: "~/.kube/config"}},
		{"namespaces", "kubernetes {\n  namespaces = [\"default\", \"shop\", \"team-a1\"]\n}\n",
			config.KubernetesDecl{Namespaces: []string{"default", "shop", "team-a1"}}},
		{"both", "kubernetes {\n  kubeconfig = \"/etc/bowline/kubeconfig\"\n  namespaces = [\"default\"]\n}\n",
			config.KubernetesDecl{Kubeconfig: "/etc/bowline/kubeconfig", Namespaces: []string{"default"}}},
		{"an empty list is every namespace", "kubernetes {\n  namespaces = []\n}\n", config.KubernetesDecl{Namespaces: []string{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := parse(t, file("k8s.hcl", tt.src))
			if cfg.Kubernetes == nil {
				t.Fatal("no kubernetes block decoded")
			}
			got := *cfg.Kubernetes
			if got.DeclRange.Filename != "k8s.hcl" || got.DeclRange.Start.Line != 1 {
				t.Errorf("DeclRange = %s, want k8s.hcl:1", got.DeclRange)
			}
			got.DeclRange = tt.want.DeclRange
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("kubernetes block:\n got %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

// Mistakes in the nomad and kubernetes blocks are diagnostics with the file
// and line of what is wrong.
func TestPlatformBlockErrors(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		line    int
		summary string
	}{
		// nomad
		{"cert without key", "mesh {}\n\nnomad {\n  cert_file = \"client.pem\"\n}\n", 3, "Incomplete client certificate"},
		{"key without cert", "nomad {\n  ca_file  = \"ca.pem\"\n  key_file = \"client-key.pem\"\n}\n", 1, "Incomplete client certificate"},
		{"unknown nomad attribute", "nomad {\n  adress = \"http://x:4646\"\n}\n", 2, "Unsupported argument"},
		{"token not a string", "nomad {\n  token = [\"a\"]\n}\n", 2, "Unsuitable value type"},
		{"two nomad blocks", "nomad {}\nnomad {\n  token = \"t\"\n}\n", 2, "Duplicate nomad block"},
		// kubernetes
		{"upper case namespace", "kubernetes {\n  namespaces = [\"default\", \"Shop\"]\n}\n", 2, "Invalid namespace"},
		{"underscore in namespace", "kubernetes {\n  namespaces = [\"team_a\"]\n}\n", 2, "Invalid namespace"},
		{"dot in namespace", "kubernetes {\n  namespaces = [\"a.b\"]\n}\n", 2, "Invalid namespace"},
		{"leading dash", "kubernetes {\n\n  namespaces = [\"-shop\"]\n}\n", 3, "Invalid namespace"},
		{"empty namespace", "kubernetes {\n  namespaces = [\"\"]\n}\n", 2, "Invalid namespace"},
		{"64 characters", "kubernetes {\n  namespaces = [\"" + strings.Repeat("a", 64) + "\"]\n}\n", 2, "Invalid namespace"},
		{"namespaces not a list of strings", "kubernetes {\n  namespaces = \"default\"\n}\n", 2, "Unsuitable value type"},
		{"unknown kubernetes attribute", "kubernetes {\n  namespace = \"default\"\n}\n", 2, "Unsupported argument"},
		{"two kubernetes blocks", "kubernetes {}\n\nkubernetes {}\n", 3, "Duplicate kubernetes block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := []config.File{file("platform.hcl", tt.src)}
			_, diags := config.Parse(files)
			if !hasDiag(diags, "platform.hcl", tt.line, tt.summary) {
				t.Errorf("want %q at platform.hcl:%d, got:\n%s", tt.summary, tt.line, config.FormatDiagnostics(diags, sourcesOf(files)))
			}
		})
	}

	// Every bad namespace is reported, not only the first; a name of 63
	// characters is fine.
	files := []config.File{file("k.hcl", "kubernetes {\n  namespaces = [\"A\", \"ok\", \"b_c\", \""+strings.Repeat("a", 63)+"\"]\n}\n")}
	_, diags := config.Parse(files)
	var n int
	for _, d := range diags {
		if d.Summary == "Invalid namespace" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d Invalid namespace diagnostics, want 2 (A and b_c):\n%s", n, config.FormatDiagnostics(diags, sourcesOf(files)))
	}
}
