package xdsbench

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	ServeIfChild() // the servers under test are this test binary, run again
	os.Exit(m.Run())
}

// TestSmoke runs the whole harness at N = 5, S = 10 against Bowline and the
// SnapshotCache baseline, both protocols.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	w := Workload{Proxies: 5, Services: 10, Endpoints: 3}
	for _, peer := range []func(Options) Peer{NewBowline, NewSnapshotCache} {
		for _, proto := range []string{"sotw", "delta"} {
			p := peer(Options{})
			t.Run(p.Name()+"/"+proto, func(t *testing.T) {
				t.Parallel()
				ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
				defer cancel()
				r, err := Run(ctx, p, proto, w, Options{WorkDir: t.TempDir(), OneRepeats: 2, AllRepeats: 1, PhaseTimeout: 30 * time.Second, Logf: t.Logf})
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
					if ph.WireBytes <= 0 {
						t.Errorf("%s: no bytes counted", ph.Name)
					}
				}
				if r.OneService == nil || r.OneService.Changes != 2 || r.EveryService == nil || r.Reconnect == nil || r.Memory == nil {
					t.Fatalf("missing figures: %+v", r)
				}
				if r.Memory.EmptyRSS <= 0 || r.Memory.EmptyHeap <= 0 {
					t.Errorf("memory not measured: %+v", r.Memory)
				}
			})
		}
	}
}
