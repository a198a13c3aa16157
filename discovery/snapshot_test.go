package discovery_test

import (
	"maps"
	"slices"
	"testing"

	"github.com/bowlinemesh/bowline/discovery"
)

func key(ns, name string) discovery.ServiceKey {
	return discovery.ServiceKey{Namespace: ns, Name: name}
}

// svc builds a small service with one endpoint per address.
func svc(ns, name string, addrs ...string) *discovery.Service {
	s := &discovery.Service{ServiceKey: key(ns, name), Protocol: discovery.ProtocolHTTP, Endpoints: []discovery.Endpoint{}}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Address: a, Port: 8080, Labels: map[string]string{"version": "v1"}})
	}
	return s
}

func keysOf(m map[discovery.ServiceKey]struct{}) []discovery.ServiceKey {
	return slices.SortedFunc(maps.Keys(m), discovery.ServiceKey.Compare)
}

func TestSnapshotVersionIgnoresOrder(t *testing.T) {
	a := func() []*discovery.Service {
		s := baseService()
		return []*discovery.Service{svc("default", "web", "10.0.0.1", "10.0.0.2"), s, svc("prod", "api", "10.1.0.1")}
	}
	b := func() []*discovery.Service {
		s := baseService()
		slices.Reverse(s.Endpoints)
		slices.Reverse(s.Upstreams)
		w := svc("default", "web", "10.0.0.2", "10.0.0.1")
		return []*discovery.Service{svc("prod", "api", "10.1.0.1"), w, s}
	}
	va, vb := discovery.NewSnapshot(nil, a()).Version, discovery.NewSnapshot(nil, b()).Version
	if va == "" {
		t.Fatal("empty version")
	}
	if va != vb {
		t.Errorf("equal content in another order gives another version: %s != %s", va, vb)
	}
	// The previous snapshot must not influence the version of equal content.
	prev := discovery.NewSnapshot(nil, []*discovery.Service{svc("default", "other", "10.9.9.9")})
	if vc := discovery.NewSnapshot(prev, b()).Version; vc != va {
		t.Errorf("version depends on the previous snapshot: %s != %s", vc, va)
	}
	if vd := discovery.NewSnapshot(discovery.NewSnapshot(nil, a()), b()).Version; vd != va {
		t.Errorf("version computed against an equal previous snapshot differs: %s != %s", vd, va)
	}
}

// Two endpoints of one source at the same address and port must be reduced
// the same way whatever order the source lists them in, or replicas that
// receive the same content compute different versions.
func TestSnapshotVersionIgnoresOrderOfSameAddressEndpoints(t *testing.T) {
	mk := func(reverse bool) []*discovery.Service {
		s := &discovery.Service{ServiceKey: key("default", "web"), Protocol: discovery.ProtocolHTTP, Endpoints: []discovery.Endpoint{
			{Address: "10.0.0.1", Port: 80, Labels: map[string]string{"version": "v1"}, Source: "consul"},
			{Address: "10.0.0.1", Port: 80, Labels: map[string]string{"version": "v2"}, Source: "consul"},
		}}
		if reverse {
			slices.Reverse(s.Endpoints)
		}
		return []*discovery.Service{s}
	}
	if a, b := discovery.NewSnapshot(nil, mk(false)).Version, discovery.NewSnapshot(nil, mk(true)).Version; a != b {
		t.Errorf("same endpoints in another order give another version: %s != %s", a, b)
	}
}

func TestSnapshotVersionChangesWithContent(t *testing.T) {
	others := func() []*discovery.Service { return []*discovery.Service{svc("default", "web", "10.0.0.1")} }
	base := discovery.NewSnapshot(nil, append(others(), baseService()))
	seen := map[string]string{base.Version: "base"}
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			s := baseService()
			m.mutate(s)
			snap := discovery.NewSnapshot(nil, append(others(), s))
			if snap.Version == base.Version {
				t.Fatalf("changing %s leaves the version at %s", m.name, snap.Version)
			}
			if prev, dup := seen[snap.Version]; dup {
				t.Errorf("changing %s gives the same version as %s", m.name, prev)
			}
			seen[snap.Version] = m.name
			// Built incrementally from the base snapshot, the version is the same.
			s2 := baseService()
			m.mutate(s2)
			if inc := discovery.NewSnapshot(base, append(others(), s2)); inc.Version != snap.Version {
				t.Errorf("incremental version %s != from-scratch version %s", inc.Version, snap.Version)
			}
		})
	}
	t.Run("service added", func(t *testing.T) {
		if v := discovery.NewSnapshot(nil, append(others(), baseService(), svc("default", "extra"))).Version; v == base.Version {
			t.Error("adding a service (even without endpoints) leaves the version unchanged")
		}
	})
	t.Run("service removed", func(t *testing.T) {
		if v := discovery.NewSnapshot(nil, others()).Version; v == base.Version {
			t.Error("removing a service leaves the version unchanged")
		}
	})
	t.Run("empty", func(t *testing.T) {
		v1 := discovery.NewSnapshot(nil, nil).Version
		if v1 == "" || v1 == base.Version {
			t.Errorf("empty catalog version = %q", v1)
		}
		if v2 := discovery.NewSnapshot(nil, []*discovery.Service{}).Version; v2 != v1 {
			t.Errorf("nil and empty service lists give different versions: %s != %s", v1, v2)
		}
	})
}

func TestSnapshotChanged(t *testing.T) {
	healthChanged := func() *discovery.Service {
		s := svc("default", "b", "10.0.0.2")
		s.Endpoints[0].Health = discovery.HealthUnhealthy
		return s
	}
	labelChanged := func() *discovery.Service {
		s := svc("default", "b", "10.0.0.2")
		s.Endpoints[0].Labels["version"] = "v2"
		return s
	}
	prevServices := func() []*discovery.Service {
		return []*discovery.Service{svc("default", "a", "10.0.0.1"), svc("default", "b", "10.0.0.2"), svc("prod", "c", "10.0.0.3")}
	}
	tests := []struct {
		name string
		next []*discovery.Service
		want []discovery.ServiceKey
	}{
		{
			name: "nothing changed",
			next: prevServices(),
			want: nil,
		},
		{
			name: "nothing changed, other order",
			next: []*discovery.Service{svc("prod", "c", "10.0.0.3"), svc("default", "b", "10.0.0.2"), svc("default", "a", "10.0.0.1")},
			want: nil,
		},
		{
			name: "endpoint added",
			next: []*discovery.Service{svc("default", "a", "10.0.0.1", "10.0.0.9"), svc("default", "b", "10.0.0.2"), svc("prod", "c", "10.0.0.3")},
			want: []discovery.ServiceKey{key("default", "a")},
		},
		{
			name: "health changed",
			next: []*discovery.Service{svc("default", "a", "10.0.0.1"), healthChanged(), svc("prod", "c", "10.0.0.3")},
			want: []discovery.ServiceKey{key("default", "b")},
		},
		{
			name: "label changed",
			next: []*discovery.Service{svc("default", "a", "10.0.0.1"), labelChanged(), svc("prod", "c", "10.0.0.3")},
			want: []discovery.ServiceKey{key("default", "b")},
		},
		{
			name: "service removed",
			next: []*discovery.Service{svc("default", "a", "10.0.0.1"), svc("default", "b", "10.0.0.2")},
			want: []discovery.ServiceKey{key("prod", "c")},
		},
		{
			name: "added, changed and removed at once",
			next: []*discovery.Service{svc("default", "a", "10.0.0.1"), healthChanged(), svc("prod", "d", "10.0.0.4")},
			want: []discovery.ServiceKey{key("default", "b"), key("prod", "c"), key("prod", "d")},
		},
		{
			name: "same name in another namespace is another service",
			next: []*discovery.Service{svc("default", "a", "10.0.0.1"), svc("default", "b", "10.0.0.2"), svc("default", "c", "10.0.0.3")},
			want: []discovery.ServiceKey{key("default", "c"), key("prod", "c")},
		},
		{
			name: "everything removed",
			next: nil,
			want: []discovery.ServiceKey{key("default", "a"), key("default", "b"), key("prod", "c")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev := discovery.NewSnapshot(nil, prevServices())
			next := discovery.NewSnapshot(prev, tt.next)
			if next.Changed == nil {
				t.Fatal("Changed is nil (\"everything\") for a snapshot built on a previous one")
			}
			if got := keysOf(next.Changed); !slices.Equal(got, tt.want) {
				t.Errorf("Changed = %v, want %v", got, tt.want)
			}
			for _, k := range []discovery.ServiceKey{key("default", "a"), key("default", "b"), key("prod", "c"), key("prod", "d"), key("default", "c")} {
				if got, want := next.ChangedKey(k), slices.Contains(tt.want, k); got != want {
					t.Errorf("ChangedKey(%v) = %v, want %v", k, got, want)
				}
			}
			if (len(tt.want) == 0) != (next.Version == prev.Version) {
				t.Errorf("version %s -> %s does not agree with changed set %v", prev.Version, next.Version, tt.want)
			}
		})
	}
}

func TestSnapshotFirstChangedIsEverything(t *testing.T) {
	s := discovery.NewSnapshot(nil, []*discovery.Service{svc("default", "a", "10.0.0.1")})
	if s.Changed != nil {
		t.Errorf("first snapshot Changed = %v, want nil (everything)", s.Changed)
	}
	if !s.ChangedKey(key("default", "a")) || !s.ChangedKey(key("any", "thing")) {
		t.Error("ChangedKey must report true for every key of a first snapshot")
	}
}

func TestSnapshotAccessors(t *testing.T) {
	unnamespaced := svc("", "zeta", "10.0.0.5")
	s := discovery.NewSnapshot(nil, []*discovery.Service{
		svc("prod", "api", "10.0.0.1", "10.0.0.2"),
		unnamespaced,
		svc("default", "alpha", "10.0.0.3"),
		svc("default", "empty"),
	})
	var got []discovery.ServiceKey
	for _, x := range s.Services() {
		got = append(got, x.ServiceKey)
	}
	want := []discovery.ServiceKey{key("default", "alpha"), key("default", "empty"), key("default", "zeta"), key("prod", "api")}
	if !slices.Equal(got, want) {
		t.Errorf("Services() order = %v, want %v", got, want)
	}
	if s.Len() != 4 {
		t.Errorf("Len() = %d, want 4", s.Len())
	}
	if s.Endpoints() != 4 {
		t.Errorf("Endpoints() = %d, want 4", s.Endpoints())
	}
	if x, ok := s.Service(key("default", "zeta")); !ok || len(x.Endpoints) != 1 {
		t.Errorf("Service(default/zeta) = %v, %v; a service without namespace lands in default", x, ok)
	}
	if _, ok := s.Service(key("", "zeta")); ok {
		t.Error("Service(/zeta) found a service under the empty namespace")
	}
	if _, ok := s.Service(key("default", "missing")); ok {
		t.Error("Service(default/missing) reported a service")
	}

	var zero [32]byte
	if s.ServiceHash(key("prod", "api")) == zero {
		t.Error("ServiceHash of a present service is zero")
	}
	if s.ServiceHash(key("prod", "missing")) != zero {
		t.Error("ServiceHash of an absent service is not zero")
	}
	if s.ServiceHash(key("prod", "api")) == s.ServiceHash(key("default", "alpha")) {
		t.Error("different services have the same hash")
	}
	other := discovery.NewSnapshot(nil, []*discovery.Service{svc("prod", "api", "10.0.0.2", "10.0.0.1")})
	if other.ServiceHash(key("prod", "api")) != s.ServiceHash(key("prod", "api")) {
		t.Error("equal services in different snapshots have different hashes")
	}
}

func TestNilSnapshotIsEmpty(t *testing.T) {
	var s *discovery.Snapshot
	if s.Len() != 0 || s.Endpoints() != 0 || s.Services() != nil {
		t.Error("nil snapshot is not empty")
	}
	if _, ok := s.Service(key("default", "a")); ok {
		t.Error("nil snapshot has a service")
	}
	if s.ServiceHash(key("default", "a")) != ([32]byte{}) {
		t.Error("nil snapshot has a service hash")
	}
}
