package admin_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/admin"
	"github.com/bowlinemesh/bowline/xds/server"
)

// gatedSource sends its services only once release is closed, so the
// catalog publishes no snapshot before then.
type gatedSource struct {
	release  chan struct{}
	services []*discovery.Service
}

func (g *gatedSource) Name() string { return "gated" }

func (g *gatedSource) Run(ctx context.Context, out chan<- discovery.State) error {
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil
	}
	select {
	case out <- discovery.State{Services: g.services}:
	case <-ctx.Done():
		return nil
	}
	<-ctx.Done()
	return nil
}

// waitFor polls cond (no assertion on how long it takes beyond a generous
// deadline).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// /readyz answers 503 with a JSON error until the xDS server has built from
// both a catalog snapshot and a configuration, and 200 from then on.
func TestReadyzIs503UntilTheFirstSnapshot(t *testing.T) {
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	src := &gatedSource{release: make(chan struct{}), services: []*discovery.Service{{
		ServiceKey: discovery.ServiceKey{Namespace: "default", Name: "greeter"},
		Protocol:   discovery.ProtocolGRPC,
		Endpoints:  []discovery.Endpoint{{Address: "127.0.0.1", Port: 5001}},
	}}}
	catalog := discovery.NewCatalog(log, discovery.Options{Debounce: time.Millisecond})
	store := config.NewStore(log)
	xds := server.New(log, server.Options{Debounce: time.Millisecond})
	reg := prometheus.NewRegistry()
	srv := httptest.NewServer(admin.New(log, catalog, store, xds, reg, reg))
	defer srv.Close()

	get := func(path string) (int, []byte) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	want503 := func(stage string) {
		t.Helper()
		code, body := get("/readyz")
		var e struct {
			Error string `json:"error"`
		}
		if code != http.StatusServiceUnavailable || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Fatalf("%s: GET /readyz = %d %s, want 503 with a JSON error", stage, code, body)
		}
		// Liveness and the other read endpoints answer meanwhile.
		if code, body := get("/healthz"); code != http.StatusOK {
			t.Fatalf("%s: GET /healthz = %d %s", stage, code, body)
		}
		if code, body := get("/v1/services"); code != http.StatusOK {
			t.Fatalf("%s: GET /v1/services = %d %s", stage, code, body)
		}
		if code, body := get("/metrics"); code != http.StatusOK {
			t.Fatalf("%s: GET /metrics = %d %s", stage, code, body)
		}
	}

	// Nothing running yet.
	want503("before the server runs")

	// The configuration arrives, the catalog has no snapshot yet.
	go func() { _ = catalog.Run(ctx, src) }()
	store.Update(config.FileSet{Source: "test"})
	go func() { _ = xds.Run(ctx, catalog, store) }()
	waitFor(t, "the server to take the configuration", func() bool { return xds.Input().Config != nil })
	if catalog.Snapshot() != nil {
		t.Fatal("the catalog published a snapshot before its source sent a state")
	}
	want503("configuration loaded, no catalog snapshot")

	// The source reports: the first snapshot is built, and readiness follows.
	close(src.release)
	waitFor(t, "the server to become ready", func() bool {
		select {
		case <-xds.Ready():
			return true
		default:
			return false
		}
	})
	code, body := get("/readyz")
	var ok struct {
		Status string `json:"status"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &ok) != nil || ok.Status != "ready" {
		t.Fatalf("GET /readyz after the first snapshot = %d %s, want 200 ready", code, body)
	}
	if in := xds.Input(); in.Catalog == nil || in.Config == nil {
		t.Fatalf("ready without both inputs: %+v", in)
	}
}
