package xdsbench

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestConsulSmoke runs the harness at N = 5, S = 10 against Consul when its
// binary is there (make consul).
func TestConsulSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Consul")
	}
	bin, err := filepath.Abs("../../bin/consul")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skip("no Consul binary (make consul)")
	}
	w := Workload{Proxies: 5, Services: 10, Endpoints: 3}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	o := Options{WorkDir: t.TempDir(), ConsulBin: bin, OneRepeats: 2, AllRepeats: 1, PhaseTimeout: time.Minute, Logf: t.Logf}
	r, err := Run(ctx, NewConsul(o), "delta", w, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) > 0 {
		t.Fatalf("errors: %q", r.Errors)
	}
	for _, ph := range r.Phases {
		if ph.Converged != ph.Proxies || ph.TimedOut {
			t.Errorf("%s: %d of %d proxies converged", ph.Name, ph.Converged, ph.Proxies)
		}
	}
}
