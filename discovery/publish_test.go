package discovery

import (
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
)

// randomService is one of a few services a source may report, with one of a
// few versions of each part, so that sources overlap and states repeat.
func randomService(r *rand.Rand) *Service {
	s := &Service{ServiceKey: ServiceKey{Namespace: []string{"", "default", "shop"}[r.IntN(3)], Name: fmt.Sprintf("s%d", r.IntN(5))},
		Protocol: []Protocol{"", ProtocolHTTP, ProtocolGRPC}[r.IntN(3)]}
	if r.IntN(4) == 0 {
		s.Labels = map[string]string{"team": fmt.Sprint(r.IntN(2))}
	}
	if r.IntN(6) == 0 {
		s.Labels = map[string]string{LabelMerge: "false"}
	}
	if r.IntN(3) == 0 {
		s.Upstreams = []Upstream{{Service: ServiceKey{Namespace: "default", Name: "s1"}, LocalPort: uint32(9000 + r.IntN(2))}}
	}
	for range r.IntN(4) {
		e := Endpoint{Address: fmt.Sprintf("10.0.0.%d", r.IntN(4)), Port: uint32(80 + r.IntN(2)), Labels: map[string]string{"v": fmt.Sprint(r.IntN(2))}}
		if r.IntN(3) == 0 {
			e.SidecarPort = 21000
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	return s
}

// Publishing with the services merged before gives, change after change, the
// snapshot that merging everything anew gives: the same version, services
// and changed set.
func TestPublishMatchesMergingAnew(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	c := NewCatalog(slog.New(slog.DiscardHandler), Options{})
	sources := []string{"consul", "file", "kubernetes"}
	states := map[string][]*Service{}
	var prev *Snapshot
	for step := range 500 {
		// Change a source: keep some of its services (the same values), drop
		// some, add new ones.
		src := sources[r.IntN(len(sources))]
		var next []*Service
		for _, s := range states[src] {
			if r.IntN(5) > 0 {
				next = append(next, s)
			}
		}
		for range r.IntN(3) {
			next = append(next, randomService(r))
		}
		states[src] = next
		c.apply(State{Source: src, Services: next})
		c.publish()
		got := c.Snapshot()

		// Anew: copies of every input, merged and snapshotted from scratch
		// against the previous snapshot as merging anew built it.
		fresh := map[string][]*Service{}
		for s, svcs := range states {
			for _, svc := range svcs {
				fresh[s] = append(fresh[s], svc.Clone())
			}
		}
		want := NewSnapshot(prev, merge(slog.New(slog.DiscardHandler), fresh))
		if prev == nil || want.Version != prev.Version || len(want.Changed) > 0 {
			prev = want
		} else {
			want = prev // publish keeps the snapshot when nothing changed
		}
		if got.Version != want.Version || got.Len() != want.Len() {
			t.Fatalf("step %d: version %s with %d services, want %s with %d", step, got.Version, got.Len(), want.Version, want.Len())
		}
		for i, svc := range got.Services() {
			if w := want.Services()[i]; !svc.Equal(w) || !maps.Equal(svc.Labels, w.Labels) {
				t.Fatalf("step %d: service %+v, want %+v", step, svc, w)
			}
		}
		if (got.Changed == nil) != (want.Changed == nil) || !maps.Equal(got.Changed, want.Changed) {
			t.Fatalf("step %d: changed %v, want %v", step, got.Changed, want.Changed)
		}
	}
}

// A snapshot built with services of the previous one takes them as they
// are: it does not write to what readers of the previous snapshot read.
func TestNewSnapshotLeavesPreviousServicesAlone(t *testing.T) {
	var svcs []*Service
	for k := range 50 {
		s := testService(fmt.Sprintf("s%02d", k))
		for j := range 20 {
			s.Endpoints = append(s.Endpoints, Endpoint{Address: fmt.Sprintf("10.0.%d.%d", k, 20-j), Port: 80, Labels: map[string]string{"v": "1"}})
		}
		svcs = append(svcs, s)
	}
	prev := NewSnapshot(nil, svcs)
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 20 {
			for _, s := range prev.Services() {
				for _, e := range s.Endpoints {
					_ = e.Address
				}
			}
		}
	})
	changed := testService("s07", "10.9.9.9")
	next := append([]*Service{changed}, prev.Services()...)
	next = append(next[:8:8], next[9:]...) // s07 replaced
	snap := NewSnapshot(prev, next)
	wg.Wait()
	if len(snap.Changed) != 1 || !snap.ChangedKey(changed.ServiceKey) {
		t.Errorf("changed %v, want only %s", snap.Changed, changed.ServiceKey)
	}
	again := NewSnapshot(snap, snap.Services())
	if again.Version != snap.Version || len(again.Changed) != 0 {
		t.Errorf("the same services again: version %s (was %s), changed %v", again.Version, snap.Version, again.Changed)
	}
}
