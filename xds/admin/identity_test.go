package admin_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/xds/admin"
	"github.com/bowlinemesh/bowline/xds/server"
)

func TestIdentityEndpoints(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	td := spiffeid.RequireTrustDomainFromString("bowline.local")
	ca, err := identity.New(t.Context(), identity.Options{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	auth := identity.NewAuthority(identity.AuthorityOptions{CA: ca, TTL: func() time.Duration { return time.Hour }})
	api := admin.New(log, discovery.NewCatalog(log, discovery.Options{}), config.NewStore(log), server.New(log, server.Options{}), nil, prometheus.NewRegistry())
	api.HandleIdentity(auth)
	srv := httptest.NewServer(api)
	defer srv.Close()
	id := spiffeid.RequireFromString("spiffe://bowline.local/ns/default/svc/web")
	cert, err := auth.Certificate(id)
	if err != nil {
		t.Fatal(err)
	}

	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	code, roots := do("GET", "/v1/ca/roots", "")
	if code != 200 || roots != string(auth.RootsPEM()) {
		t.Fatalf("GET /v1/ca/roots: %d %q", code, roots)
	}
	code, body := do("GET", "/v1/certs", "")
	var certs struct {
		Certificates []identity.IssuedCert `json:"certificates"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &certs) != nil || len(certs.Certificates) != 1 ||
		certs.Certificates[0].Serial != cert.Serial || certs.Certificates[0].SPIFFEID != id.String() || certs.Certificates[0].Via != "sds" {
		t.Fatalf("GET /v1/certs: %d %s", code, body)
	}
	if strings.Contains(body, "PRIVATE") || strings.Contains(body, string(cert.KeyPEM)) {
		t.Fatal("GET /v1/certs shows a key")
	}
	tests := []struct {
		body string
		code int
	}{
		{`{"phase": "prepare"}`, http.StatusOK},
		{`{"phase": "activate"}`, http.StatusConflict},
		{`{"phase": "activate", "force": true}`, http.StatusOK},
		{`{"phase": "sideways"}`, http.StatusConflict},
		{`not json`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		if code, body := do("POST", "/v1/ca/rotate", tt.body); code != tt.code {
			t.Errorf("POST /v1/ca/rotate %s: %d %s, want %d", tt.body, code, body, tt.code)
		}
	}
	code, body = do("GET", "/v1/ca", "")
	var st identity.RotationStatus
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || len(st.Roots) != 2 || st.NextPhase != identity.PhaseFinish {
		t.Fatalf("GET /v1/ca: %d %s", code, body)
	}
}
