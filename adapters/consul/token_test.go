package consul

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/discovery"
)

// tokenRecorder is a fake Consul HTTP API with an empty catalog that records
// the ACL token of every request.
type tokenRecorder struct {
	mu     sync.Mutex
	tokens []string
}

func (r *tokenRecorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.tokens = append(r.tokens, req.Header.Get("X-Consul-Token"))
	r.mu.Unlock()
	w.Header().Set("X-Consul-Index", "1")
	w.Header().Set("Content-Type", "application/json")
	switch req.URL.Path {
	case "/v1/catalog/services":
		_, _ = w.Write([]byte(`{}`))
	case "/v1/kv/bowline/":
		w.WriteHeader(http.StatusNotFound)
	default:
		_, _ = w.Write([]byte(`[]`))
	}
}

func (r *tokenRecorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.tokens...)
}

// The source's ACL token is the configured (HCL) one, else CONSUL_HTTP_TOKEN;
// every request carries it.
func TestTokenFallsBackToEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name, hcl, env, want string
	}{
		{name: "HCL token wins over the environment", hcl: "hcl-token", env: "env-token", want: "hcl-token"},
		{name: "HCL token without environment", hcl: "hcl-token", want: "hcl-token"},
		{name: "environment when HCL is empty", env: "env-token", want: "env-token"},
		{name: "neither", want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(api.HTTPTokenEnvName, tc.env)
			t.Setenv(api.HTTPTokenFileEnvName, "")
			t.Setenv(api.HTTPAddrEnvName, "")

			t.Run("discovery source", func(t *testing.T) {
				rec := &tokenRecorder{}
				consul := httptest.NewServer(rec)
				defer consul.Close()
				src, err := New(Config{Address: consul.URL, Token: tc.hcl, Debounce: time.Millisecond}, nil)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
				defer cancel()
				states := make(chan discovery.State, 1)
				done := make(chan struct{})
				go func() { _ = src.Run(ctx, states); close(done) }()
				select {
				case st := <-states:
					if st.Err != nil {
						t.Fatalf("first state: %v", st.Err)
					}
				case <-ctx.Done():
					t.Fatal("no state from the fake Consul")
				}
				cancel()
				<-done
				checkTokens(t, rec.seen(), tc.want)
			})

			t.Run("KV source", func(t *testing.T) {
				rec := &tokenRecorder{}
				consul := httptest.NewServer(rec)
				defer consul.Close()
				kv, err := NewKV(KVConfig{Address: consul.URL, Token: tc.hcl, Prefix: "bowline"}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := kv.list(t.Context(), 0); err != nil {
					t.Fatal(err)
				}
				checkTokens(t, rec.seen(), tc.want)
			})
		})
	}
}

func checkTokens(t *testing.T, seen []string, want string) {
	t.Helper()
	if len(seen) == 0 {
		t.Fatal("the fake Consul got no request")
	}
	for i, got := range seen {
		if got != want {
			t.Fatalf("request %d of %d carried X-Consul-Token %q, want %q", i+1, len(seen), got, want)
		}
	}
}
