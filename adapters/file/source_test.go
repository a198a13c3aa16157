package file_test

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

const waitLimit = 5 * time.Second

// feed is a ConfigFeed the test drives by hand.
type feed struct {
	ch        chan *config.Config
	cancelled atomic.Bool
}

func (f *feed) Subscribe() (<-chan *config.Config, func()) {
	return f.ch, func() { f.cancelled.Store(true) }
}

func (f *feed) publish(t *testing.T, cfg *config.Config) {
	t.Helper()
	select {
	case f.ch <- cfg:
	case <-time.After(waitLimit):
		t.Fatal("source did not take the configuration")
	}
}

func configWith(version string, ports ...uint32) *config.Config {
	cfg := &config.Config{Version: version, Mesh: config.Mesh{TrustDomain: "td"}}
	for i, p := range ports {
		cfg.Services = append(cfg.Services, &config.ServiceDecl{
			Name: fmt.Sprintf("svc%d", i), Namespace: "default", Protocol: "http",
			Endpoints: []*config.EndpointDecl{{Address: "10.0.0.1", Port: p}},
		})
	}
	return cfg
}

func runSource(t *testing.T, src *file.Source) (<-chan discovery.State, <-chan error, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	updates := make(chan discovery.State)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, updates) }()
	t.Cleanup(cancel)
	return updates, done, cancel
}

func recvState(t *testing.T, updates <-chan discovery.State) discovery.State {
	t.Helper()
	select {
	case st := <-updates:
		return st
	case <-time.After(waitLimit):
		t.Fatal("no state sent")
		return discovery.State{}
	}
}

func ports(st discovery.State) []uint32 {
	var out []uint32
	for _, s := range st.Services {
		for _, e := range s.Endpoints {
			out = append(out, e.Port)
		}
	}
	return out
}

func TestSourceSendsOnVersionChangeOnly(t *testing.T) {
	f := &feed{ch: make(chan *config.Config)}
	src := file.New(f)
	if src.Name() != "file" {
		t.Errorf("Name() = %q, want file", src.Name())
	}
	updates, done, cancel := runSource(t, src)

	f.publish(t, configWith("v1", 1000))
	if st := recvState(t, updates); st.Err != nil || fmt.Sprint(ports(st)) != "[1000]" {
		t.Fatalf("first state = %+v (ports %v), want v1's service", st, ports(st))
	}

	// Same version (a store republishes it when a file is rejected): nothing.
	// The feed channel is unbuffered and read in order, so once v2 is taken
	// the duplicates were handled; the next state must be v2's.
	f.publish(t, configWith("v1", 1000))
	f.publish(t, configWith("v1", 1000))
	f.publish(t, configWith("v2", 2000, 2001))
	if st := recvState(t, updates); fmt.Sprint(ports(st)) != "[2000 2001]" {
		t.Fatalf("state after duplicates = ports %v, want v2's [2000 2001]", ports(st))
	}

	// Going back to an earlier version is a change too.
	f.publish(t, configWith("v1", 1000))
	if st := recvState(t, updates); fmt.Sprint(ports(st)) != "[1000]" {
		t.Fatalf("state after returning to v1 = ports %v, want [1000]", ports(st))
	}

	// An empty configuration empties the source (it is not an error).
	f.publish(t, configWith("v3"))
	if st := recvState(t, updates); st.Err != nil || len(st.Services) != 0 {
		t.Fatalf("state for an empty config = %+v, want no services and no error", st)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v after cancellation, want nil", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return after cancellation")
	}
	if !f.cancelled.Load() {
		t.Error("Run did not cancel its subscription")
	}
}

func TestSourceStopsWhileBlockedOnSend(t *testing.T) {
	f := &feed{ch: make(chan *config.Config)}
	_, done, cancel := runSource(t, file.New(f))
	f.publish(t, configWith("v1", 1000)) // nobody reads updates
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return while blocked sending a state")
	}
}

// With the real store as the feed: a rejected edit republishes the same
// version, which must not produce a state; a real change does.
func TestSourceFollowsStore(t *testing.T) {
	st := config.NewStore(slog.New(slog.DiscardHandler))
	good := func(port int) config.File {
		return config.File{Name: "web.hcl", Content: fmt.Appendf(nil, `service "web" {
  protocol = "http"
  endpoint {
    address = "10.0.0.1"
    port    = %d
  }
}
`, port)}
	}
	st.Update(config.FileSet{Source: "dir", Files: []config.File{good(8080)}})
	updates, _, _ := runSource(t, file.New(st))

	if s := recvState(t, updates); fmt.Sprint(ports(s)) != "[8080]" {
		t.Fatalf("first state ports = %v, want [8080]", ports(s))
	}

	st.Update(config.FileSet{Source: "dir", Files: []config.File{{Name: "web.hcl", Content: []byte(`service "web" { protocol = "ftp" }`)}}})
	if n := len(st.Current().Status.Rejected); n != 1 {
		t.Fatalf("store rejected %d files, want 1", n)
	}
	st.Update(config.FileSet{Source: "dir", Files: []config.File{good(9090)}})

	// Whatever the store coalesced, the next state carries the fixed port,
	// never a repeat of 8080.
	s := recvState(t, updates)
	if fmt.Sprint(ports(s)) != "[9090]" {
		t.Errorf("state after a rejected edit and a fix = ports %v, want [9090]", ports(s))
	}
	if len(s.Services) == 1 && s.Services[0].Endpoints[0].Identity != "spiffe://bowline.local/ns/default/svc/web" {
		t.Errorf("identity = %q, want the default trust domain", s.Services[0].Endpoints[0].Identity)
	}
}

// A service whose declaration did not change is sent again as the very same
// value, so that the catalog merges, normalizes and hashes it no more; one
// whose declaration changed, or whose identity did, is converted anew.
func TestSourceResendsUnchangedServices(t *testing.T) {
	f := &feed{ch: make(chan *config.Config)}
	updates, _, _ := runSource(t, file.New(f))
	decl := func(name string, port uint32, line int) *config.ServiceDecl {
		return &config.ServiceDecl{Name: name, Namespace: "default", Protocol: "http", Labels: map[string]string{"team": "a"},
			Endpoints: []*config.EndpointDecl{{Address: "10.0.0.1", Port: port, Labels: map[string]string{"v": "1"},
				DeclRange: hcl.Range{Filename: "s.hcl", Start: hcl.Pos{Line: line}}}},
			Upstreams: []*config.UpstreamDecl{{Name: "b", LocalPort: 9000}},
			DeclRange: hcl.Range{Filename: "s.hcl", Start: hcl.Pos{Line: line}}}
	}
	cfg := func(version, td string, decls ...*config.ServiceDecl) *config.Config {
		return &config.Config{Version: version, Mesh: config.Mesh{TrustDomain: td}, Services: decls}
	}
	a, b := decl("a", 80, 1), decl("b", 80, 10)
	f.publish(t, cfg("v1", "td", a, b))
	first := recvState(t, updates).Services

	// a: the same declaration; b: declared the same, elsewhere; c: new.
	f.publish(t, cfg("v2", "td", a, decl("b", 80, 20), decl("c", 80, 30)))
	second := recvState(t, updates).Services
	if second[0] != first[0] || second[1] != first[1] {
		t.Error("unchanged services were converted again")
	}

	// b changes.
	f.publish(t, cfg("v3", "td", a, decl("b", 81, 20), decl("c", 80, 30)))
	third := recvState(t, updates).Services
	if third[0] != first[0] || third[1] == second[1] || third[2] != second[2] {
		t.Error("only b should have been converted again")
	}
	if third[1].Endpoints[0].Port != 81 {
		t.Errorf("b's port = %d, want 81", third[1].Endpoints[0].Port)
	}

	// Another trust domain changes every identity.
	f.publish(t, cfg("v4", "other", a, decl("b", 81, 20), decl("c", 80, 30)))
	fourth := recvState(t, updates).Services
	for i, s := range fourth {
		if s == third[i] || s.Endpoints[0].Identity != "spiffe://other/ns/default/svc/"+s.Name {
			t.Errorf("%s: identity %q after the trust domain changed", s.Name, s.Endpoints[0].Identity)
		}
	}
	// Whatever was reused converts as Convert does.
	want := file.Convert(cfg("v4", "other", a, decl("b", 81, 20), decl("c", 80, 30)))
	for i := range want {
		if !want[i].Equal(fourth[i]) || !reflect.DeepEqual(want[i].Labels, fourth[i].Labels) {
			t.Errorf("service %d = %+v, want %+v", i, fourth[i], want[i])
		}
	}
}
