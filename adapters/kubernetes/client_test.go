package kubernetes

import (
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/rest"
)

// apiServer is a Kubernetes API server (HTTPS: client-go sends credentials
// only over TLS) that answers GET /version, and records the requests'
// Authorization and User-Agent.
type apiServer struct {
	*httptest.Server
	mu       sync.Mutex
	auth, ua []string
}

func startAPIServer(t *testing.T) *apiServer {
	s := &apiServer{}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.auth, s.ua = append(s.auth, r.Header.Get("Authorization")), append(s.ua, r.Header.Get("User-Agent"))
		s.mu.Unlock()
		if r.URL.Path != "/version" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"major": "1", "minor": "33", "gitVersion": "v1.33.2"}`)
	}))
	t.Cleanup(s.Close)
	return s
}

// writeKubeconfig writes a kubeconfig whose current context is the server
// (its certificate the cluster's CA) with a bearer token.
func writeKubeconfig(t *testing.T, path string, api *apiServer, token string) {
	t.Helper()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: bowline
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: bowline
current-context: test
`, api.URL, base64.StdEncoding.EncodeToString(ca), token)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestClientKubeconfig(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)

	tests := []struct {
		name       string
		kubeconfig func(t *testing.T, api *apiServer) string // writes the file, returns the setting
	}{
		{"an absolute path", func(t *testing.T, api *apiServer) string {
			p := filepath.Join(t.TempDir(), "kubeconfig")
			writeKubeconfig(t, p, api, "tok-absolute")
			return p
		}},
		{"~/.kube/config", func(t *testing.T, api *apiServer) string {
			writeKubeconfig(t, filepath.Join(home, ".kube", "config"), api, "tok-home")
			return "~/.kube/config"
		}},
		{"a relative path", func(t *testing.T, api *apiServer) string {
			dir := t.TempDir()
			writeKubeconfig(t, filepath.Join(dir, "kc.yaml"), api, "tok-relative")
			t.Chdir(dir)
			return "kc.yaml"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := startAPIServer(t)
			setting := tt.kubeconfig(t, api)
			cs, err := NewClientset(setting)
			if err != nil {
				t.Fatalf("NewClientset(%q): %v", setting, err)
			}
			v, err := cs.Discovery().ServerVersion()
			if err != nil {
				t.Fatalf("the client does not reach the kubeconfig's server: %v", err)
			}
			if v.GitVersion != "v1.33.2" {
				t.Errorf("server version %+v", v)
			}
			api.mu.Lock()
			defer api.mu.Unlock()
			if len(api.auth) == 0 || !strings.HasPrefix(api.auth[0], "Bearer tok-") {
				t.Errorf("Authorization %q: want the kubeconfig's token", api.auth)
			}
			if len(api.ua) == 0 || api.ua[0] != "bowline" {
				t.Errorf("User-Agent %q, want bowline", api.ua)
			}
		})
	}
}

func TestClientKubeconfigErrors(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)

	t.Run("a missing file names the expanded path", func(t *testing.T) {
		_, err := NewClientset("~/.kube/missing")
		want := filepath.Join(home, ".kube", "missing")
		if err == nil || !strings.HasPrefix(err.Error(), "kubernetes: kubeconfig "+want+": ") {
			t.Fatalf("err = %v, want one naming %s", err, want)
		}
	})
	t.Run("a file that is no kubeconfig", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "kubeconfig")
		if err := os.WriteFile(p, []byte("clusters: [this is not: yaml"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewClientset(p); err == nil || !strings.HasPrefix(err.Error(), "kubernetes: kubeconfig "+p+": ") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("without kubeconfig outside a cluster", func(t *testing.T) {
		t.Setenv("KUBERNETES_SERVICE_HOST", "")
		t.Setenv("KUBERNETES_SERVICE_PORT", "")
		_, err := NewClientset("")
		if !errors.Is(err, rest.ErrNotInCluster) || !strings.Contains(err.Error(), "set kubeconfig outside a cluster") {
			t.Fatalf("err = %v, want rest.ErrNotInCluster and a hint", err)
		}
	})
}

func TestExpandHome(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	for _, tt := range []struct{ in, want string }{
		{"~/.kube/config", filepath.Join(home, ".kube", "config")},
		{"~", home},
		{"~/", home},
		{"/etc/kubeconfig", "/etc/kubeconfig"},
		{"kubeconfig", "kubeconfig"},
		{"./~/config", "./~/config"},
		{"~other/.kube/config", "~other/.kube/config"}, // another user's home is not expanded
	} {
		got, err := expandHome(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("expandHome(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}

	t.Setenv("HOME", "")
	if _, err := expandHome("~/.kube/config"); err == nil {
		t.Error("expandHome without a home directory: no error")
	}
}
