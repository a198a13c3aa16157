package discovery

import (
	"errors"
	"log/slog"
	"testing"
)

func testService(name string, addrs ...string) *Service {
	s := &Service{ServiceKey: ServiceKey{Namespace: "default", Name: name}, Protocol: ProtocolHTTP}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, Endpoint{Address: a, Port: 80, Labels: map[string]string{"v": "1"}})
	}
	return s
}

// The loop's timing makes "nothing was published" unobservable through Run,
// so this drives one state and one publish at a time.
func TestPublishSkipsUnchangedContent(t *testing.T) {
	c := NewCatalog(slog.New(slog.DiscardHandler), Options{})
	c.apply(State{Source: "a", Services: []*Service{testService("web", "10.0.0.1", "10.0.0.2")}})
	c.publish()
	first := c.Snapshot()
	if first == nil {
		t.Fatal("no snapshot after the first publish")
	}
	sub, cancel := c.Subscribe()
	defer cancel()
	<-sub

	tests := []struct {
		name string
		st   State
	}{
		{"same content as new objects in another order", State{Source: "a", Services: []*Service{testService("web", "10.0.0.2", "10.0.0.1")}}},
		{"source error", State{Source: "a", Err: errors.New("down")}},
		{"source error carrying services", State{Source: "a", Err: errors.New("down"), Services: []*Service{testService("other", "10.0.0.9")}}},
		{"recovery with the same content", State{Source: "a", Services: []*Service{testService("web", "10.0.0.1", "10.0.0.2")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.apply(tt.st)
			c.publish()
			if got := c.Snapshot(); got != first {
				t.Errorf("a new snapshot %s replaced %s", got.Version, first.Version)
			}
			select {
			case s := <-sub:
				t.Errorf("subscriber received snapshot %s (changed %v)", s.Version, s.Changed)
			default:
			}
		})
	}

	c.apply(State{Source: "a", Services: []*Service{testService("web", "10.0.0.1")}})
	c.publish()
	select {
	case s := <-sub:
		if _, ok := s.Changed[ServiceKey{Namespace: "default", Name: "web"}]; !ok || len(s.Changed) != 1 {
			t.Errorf("Changed = %v, want only default/web", s.Changed)
		}
	default:
		t.Error("a real change published nothing")
	}
}
