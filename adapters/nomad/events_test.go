package nomad

import (
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/bowlinemesh/bowline/adapters/nomad/nomadtest"
	"github.com/bowlinemesh/bowline/discovery"
)

// The captured event stream, applied after a resync: events the resync
// already had change nothing (not even for a moment), later ones apply.
func TestNomadCapturedEventsApplyOnce(t *testing.T) {
	b, err := nomadtest.Fixture("events-lifecycle.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	var frames []frame
	dec := json.NewDecoder(strings.NewReader(string(b)))
	for dec.More() {
		var f frame
		if err := dec.Decode(&f); err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f)
	}
	if len(frames) != 8 || len(frames[0].Events) != 0 {
		t.Fatalf("%d frames; the first should be a heartbeat: %+v", len(frames), frames)
	}
	// api-grpc's registration is only in the stream (frame 38).
	grpc, err := convertRegistration(frames[4].Events[1].Payload.Service)
	if err != nil {
		t.Fatal(err)
	}
	web := discovery.ServiceKey{Namespace: "default", Name: "web"}
	api := discovery.ServiceKey{Namespace: "default", Name: "api"}
	apiGRPC := discovery.ServiceKey{Namespace: "default", Name: "api-grpc"}
	for _, c := range []struct {
		name    string
		regs    []registration
		applied map[discovery.ServiceKey]uint64
		floor   uint64
		changes []bool // per frame
	}{{
		name:    "resync at 15: web's two first instances",
		regs:    registrations(t, "service-web.json"),
		applied: map[discovery.ServiceKey]uint64{web: 15},
		floor:   15,
		// heartbeat, 14 and 15 (the resync had them), 26 (scale-up), 38
		// (api and api-grpc), 43-45 (web stopped).
		changes: []bool{false, false, false, true, true, true, true, true},
	}, {
		name:    "resync at 45: web gone, api running",
		regs:    append(registrations(t, "service-api.json"), grpc),
		applied: map[discovery.ServiceKey]uint64{api: 45, apiGRPC: 45},
		floor:   45,
		changes: []bool{false, false, false, false, false, false, false, false},
	}} {
		t.Run(c.name, func(t *testing.T) {
			r := &run{src: &Source{cfg: Config{Namespace: "*"}, log: slog.New(slog.DiscardHandler)},
				regs: map[string]registration{}, allocs: map[string]*allocEntry{}, warned: map[string]bool{}}
			r.resync(c.regs, c.applied, c.floor)
			var changes []bool
			for _, f := range frames {
				changes = append(changes, r.apply(f))
			}
			if !slices.Equal(changes, c.changes) {
				t.Fatalf("frames changing the state %v, want %v", changes, c.changes)
			}
			var names []string
			for _, reg := range r.regs {
				names = append(names, reg.Service)
			}
			slices.Sort(names)
			if !slices.Equal(names, []string{"api", "api-grpc"}) {
				t.Fatalf("after the captured lifecycle: %v", names)
			}
		})
	}
}
