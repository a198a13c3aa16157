package consul

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/test/consulagent"
)

const kvPrefix = "bowline/config/"

// kvRun runs a KV source and keeps every file set it sends.
type kvRun struct {
	t         *testing.T
	transport *countingTransport

	mu      sync.Mutex
	sets    []config.FileSet
	changed chan struct{} // closed and replaced on each set
}

func startKV(t *testing.T, address string) *kvRun {
	t.Helper()
	r := &kvRun{t: t, transport: newCountingTransport(nil), changed: make(chan struct{})}
	src, err := NewKV(KVConfig{Address: address, Prefix: kvPrefix, WrapTransport: r.transport.wrap,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := src.Name(), "consul-kv:bowline/config/"; got != want {
		t.Fatalf("Name() = %q, want %q", got, want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan config.FileSet)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, out) }()
	go func() {
		for {
			select {
			case fs := <-out:
				r.mu.Lock()
				r.sets = append(r.sets, fs)
				close(r.changed)
				r.changed = make(chan struct{})
				r.mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v on cancel, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return r
}

// wait waits for a file set satisfying cond (among those sent after the
// first `after` sets) and returns it with its position.
func (r *kvRun) wait(what string, after int, cond func(config.FileSet) bool) (config.FileSet, int) {
	r.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		r.mu.Lock()
		sets, changed := slices.Clone(r.sets), r.changed
		r.mu.Unlock()
		for i := after; i < len(sets); i++ {
			if cond(sets[i]) {
				return sets[i], i
			}
		}
		select {
		case <-changed:
		case <-deadline:
			r.t.Fatalf("timed out waiting for %s; sets sent: %s", what, describeSets(sets))
		}
	}
}

func (r *kvRun) all() []config.FileSet {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sets)
}

func describeSets(sets []config.FileSet) string {
	var b strings.Builder
	for i, fs := range sets {
		if fs.Err != nil {
			fmt.Fprintf(&b, "\n  #%d error: %v", i, fs.Err)
			continue
		}
		fmt.Fprintf(&b, "\n  #%d %s", i, strings.Join(fileNames(fs), " "))
	}
	return b.String()
}

func fileNames(fs config.FileSet) []string {
	var names []string
	for _, f := range fs.Files {
		names = append(names, f.Name)
	}
	return names
}

// files returns a matcher for a successful set with exactly these keys (with
// the contents given, where not empty).
func files(want map[string]string) func(config.FileSet) bool {
	return func(fs config.FileSet) bool {
		if fs.Err != nil || len(fs.Files) != len(want) {
			return false
		}
		for _, f := range fs.Files {
			key, ok := strings.CutPrefix(f.Name, KVFilePrefix)
			if !ok {
				return false
			}
			content, ok := want[key]
			if !ok || (content != "" && string(f.Content) != content) {
				return false
			}
		}
		return true
	}
}

func kvPut(t *testing.T, c *api.Client, key, value string) {
	t.Helper()
	if _, err := c.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func TestConsulKVFollowsThePrefix(t *testing.T) {
	t.Parallel()
	agent := consulagent.Start(t)
	c := apiClient(t, agent)
	const mesh = "mesh {\n  trust_domain = \"kv.test\"\n}\n"
	kvPut(t, c, kvPrefix+"mesh.hcl", mesh)
	kvPut(t, c, "bowline/config-old/stale.hcl", "# beside the prefix, not under it\n")
	kvPut(t, c, "other/app.hcl", "# elsewhere\n")

	r := startKV(t, agent.Address())
	first, _ := r.wait("first set", 0, func(config.FileSet) bool { return true })
	if !files(map[string]string{kvPrefix + "mesh.hcl": mesh})(first) {
		t.Fatalf("first set: want only %smesh.hcl: %s", kvPrefix, describeSets([]config.FileSet{first}))
	}
	if first.Files[0].Name != "consul-kv:bowline/config/mesh.hcl" {
		t.Fatalf("file name %q, want consul-kv:<key>", first.Files[0].Name)
	}

	// Keys that are files, at any depth, and keys that are not.
	const routes = "subset \"greeter\" \"v2\" {\n  labels = { version = \"v2\" }\n}\n"
	const extra = `{"subset": {"api": {"v1": {"labels": {"version": "v1"}}}}}`
	kvPut(t, c, kvPrefix+"routes.hcl", routes)
	kvPut(t, c, kvPrefix+"team-a/extra.hcl.json", extra)
	kvPut(t, c, kvPrefix+"notes.txt", "not configuration")
	kvPut(t, c, kvPrefix+".draft.hcl", "half written {")
	kvPut(t, c, kvPrefix+"empty-folder/", "")
	_, n := r.wait("three files", 1, files(map[string]string{kvPrefix + "mesh.hcl": mesh, kvPrefix + "routes.hcl": routes, kvPrefix + "team-a/extra.hcl.json": extra}))

	// A change to a file's content, then a deletion.
	const routes2 = "subset \"greeter\" \"v3\" {\n  labels = { version = \"v3\" }\n}\n"
	kvPut(t, c, kvPrefix+"routes.hcl", routes2)
	_, n = r.wait("routes.hcl changed", n+1, files(map[string]string{kvPrefix + "mesh.hcl": mesh, kvPrefix + "routes.hcl": routes2, kvPrefix + "team-a/extra.hcl.json": extra}))
	if _, err := c.KV().DeleteTree(kvPrefix+"team-a/", nil); err != nil {
		t.Fatal(err)
	}
	_, n = r.wait("extra.hcl.json deleted", n+1, files(map[string]string{kvPrefix + "mesh.hcl": mesh, kvPrefix + "routes.hcl": routes2}))

	// Writes outside the prefix and to keys that are not files send nothing.
	kvPut(t, c, "other/app.hcl", "# changed\n")
	kvPut(t, c, kvPrefix+"notes.txt", "changed, still not configuration")
	kvPut(t, c, kvPrefix+"routes.hcl", routes2) // same content
	// A later change shows that the writes above were seen (in order).
	kvPut(t, c, kvPrefix+"z.hcl", "")
	_, m := r.wait("z.hcl", n+1, files(map[string]string{kvPrefix + "mesh.hcl": mesh, kvPrefix + "routes.hcl": routes2, kvPrefix + "z.hcl": ""}))
	if m != n+1 {
		t.Errorf("writes that change no file sent %d sets: %s", m-n-1, describeSets(r.all()[n+1:m]))
	}

	// Blocking queries: an idle prefix costs (almost) no requests.
	time.Sleep(100 * time.Millisecond)
	before := r.transport.total.Load()
	time.Sleep(2 * time.Second)
	idle := r.transport.total.Load() - before
	t.Logf("idle: %d requests in 2s", idle)
	if idle > 2 {
		t.Errorf("%d requests in an idle 2s: the source polls instead of blocking", idle)
	}
	if most, path := r.transport.mostOutstanding("/v1/kv/"); most > 1 {
		t.Errorf("%d requests outstanding at once on %s, want one long poll", most, path)
	}
	for i, fs := range r.all() {
		if fs.Err != nil {
			t.Errorf("set %d is an error while Consul was up: %v", i, fs.Err)
		}
		for _, name := range fileNames(fs) {
			if !strings.HasPrefix(name, KVFilePrefix+kvPrefix) {
				t.Errorf("set %d holds %s, outside the prefix", i, name)
			}
		}
	}
}

// TestConsulKVInStore runs the source under a config.Store, as bowline server
// does: rules from KV are in force, an invalid key is rejected with
// diagnostics naming the key and line while its last valid version keeps
// serving, and an outage keeps the files.
func TestConsulKVInStore(t *testing.T) {
	t.Parallel()
	agent := consulagent.Start(t)
	c := apiClient(t, agent)
	const key = kvPrefix + "routes.hcl"
	const valid = `subset "greeter" "v2" {
  labels = { version = "v2" }
}

route "greeter" {
  rule {
    destination {
      subset = "v2"
    }
  }
}
`
	kvPut(t, c, key, valid)

	src, err := NewKV(KVConfig{Address: agent.Address(), Prefix: "bowline/config", MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	store := config.NewStore(testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- store.Run(ctx, src) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("store.Run: %v", err)
		}
	})
	greeter := config.ServiceRef{Namespace: "default", Name: "greeter"}
	waitConfig := func(what string, cond func(*config.Config) bool) *config.Config {
		t.Helper()
		deadline := time.Now().Add(waitTimeout)
		for {
			if cfg := store.Current(); cfg != nil && cond(cfg) {
				return cfg
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; current: %+v", what, store.Current())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	subsetLabel := func(cfg *config.Config, name string) string {
		s, ok := cfg.Traffic.Subset(greeter, name)
		if !ok {
			return ""
		}
		return s.Labels["version"]
	}
	cfg := waitConfig("the route from KV", func(cfg *config.Config) bool {
		return cfg.Traffic != nil && cfg.Traffic.Routes[greeter] != nil
	})
	if subsetLabel(cfg, "v2") != "v2" || len(cfg.Status.Files) != 1 || cfg.Status.Files[0].Name != "consul-kv:"+key {
		t.Fatalf("config from KV: files %+v, traffic %+v", cfg.Status.Files, cfg.Traffic)
	}
	goodVersion := cfg.Version

	// An invalid version: a split whose weights do not add up, on line 8.
	invalid := strings.Replace(valid, "    destination {\n      subset = \"v2\"\n    }\n",
		"    split {\n      subset = \"v2\"\n      weight = 90\n    }\n", 1)
	kvPut(t, c, key, invalid)
	cfg = waitConfig("the rejection", func(cfg *config.Config) bool { return len(cfg.Status.Rejected) == 1 })
	rej := cfg.Status.Rejected[0]
	diags := rej.DiagnosticsJSON()
	if rej.Name != "consul-kv:"+key || len(diags) == 0 {
		t.Fatalf("rejection %q with diagnostics %+v", rej.Name, diags)
	}
	d := diags[0]
	if d.File != "consul-kv:"+key || d.Line < 6 || d.Line > 9 || !strings.HasPrefix(d.Position, "consul-kv:"+key+":") || d.Source == "" {
		t.Fatalf("diagnostic %+v, want file consul-kv:%s, a line of the split and the offending source line", d, key)
	}
	t.Logf("rejected: %s", rej.Text())
	if !cfg.Status.Files[0].Stale || cfg.Status.Files[0].Hash == "" || cfg.Version != goodVersion || cfg.Traffic.Routes[greeter] == nil {
		t.Fatalf("the last valid version must keep serving, marked stale: files %+v, version %s (was %s)", cfg.Status.Files, cfg.Version, goodVersion)
	}

	// Consul goes away: the source reports it, the files stay.
	agent.Stop()
	deadline := time.Now().Add(waitTimeout)
	for store.SourceErrors()["consul-kv:bowline/config/"] == "" {
		if time.Now().After(deadline) {
			t.Fatalf("no source error while Consul is down: %v", store.SourceErrors())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if e := store.SourceErrors()["consul-kv:bowline/config/"]; !strings.HasPrefix(e, "consul: read kv bowline/config/") {
		t.Errorf("source error %q, want it prefixed with the component and the prefix", e)
	}
	if cfg := store.Current(); len(cfg.Status.Files) != 1 || cfg.Traffic.Routes[greeter] == nil {
		t.Fatalf("the configuration lost the KV files while Consul is down: %+v", cfg.Status)
	}

	// Back: the error clears, and changes are followed again.
	agent.Restart()
	deadline = time.Now().Add(waitTimeout)
	for len(store.SourceErrors()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("source error stays after Consul is back: %v", store.SourceErrors())
		}
		time.Sleep(10 * time.Millisecond)
	}
	fixed := strings.Replace(valid, `version = "v2"`, `version = "v2.1"`, 1)
	kvPut(t, c, key, fixed)
	cfg = waitConfig("the fixed version", func(cfg *config.Config) bool { return subsetLabel(cfg, "v2") == "v2.1" })
	if len(cfg.Status.Rejected) != 0 || cfg.Status.Files[0].Stale {
		t.Fatalf("a valid version must clear the rejection: %+v", cfg.Status)
	}
}

// TestConsulKVWithoutConsul: an unreachable Consul is an error set (so that
// bowline server starts with its other files), retried with backoff, and
// never a failure of Run.
func TestConsulKVWithoutConsul(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	transport := newCountingTransport(http.DefaultTransport.(*http.Transport).Clone())
	src, err := NewKV(KVConfig{Address: addr, Prefix: "/bowline/config/", HTTPClient: &http.Client{Transport: transport},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if src.Name() != "consul-kv:bowline/config/" {
		t.Fatalf("Name() = %q: a leading slash must be dropped", src.Name())
	}

	// Under a store with a directory beside it: the first configuration is
	// published, and the source's error shows.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.hcl"), []byte("mesh {\n  trust_domain = \"dir.test\"\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := config.NewStore(slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- store.Run(ctx, &config.DirSource{Dir: dir}, src) }()
	select {
	case <-store.Ready():
	case err := <-done:
		t.Fatalf("store.Run returned %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("no configuration published while Consul KV is unreachable")
	}
	if td := store.Current().Mesh.TrustDomain; td != "dir.test" {
		t.Errorf("trust domain %q, want the directory's", td)
	}
	deadline := time.Now().Add(waitTimeout)
	for !strings.HasPrefix(store.SourceErrors()[src.Name()], "consul: read kv ") {
		if time.Now().After(deadline) {
			t.Fatalf("source errors %v, want one for %s", store.SourceErrors(), src.Name())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Second)
	n := transport.total.Load()
	t.Logf("%d requests in about 1s against an unreachable Consul", n)
	if n < 2 || n > 15 {
		t.Errorf("%d requests, want a few retries with backoff", n)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("store.Run returned %v on cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestConsulKVConfig(t *testing.T) {
	for _, prefix := range []string{"", "  ", "/"} {
		if _, err := NewKV(KVConfig{Prefix: prefix}, nil); err == nil {
			t.Errorf("NewKV with prefix %q: want an error (it would read the whole store)", prefix)
		}
	}
	for prefix, name := range map[string]string{
		"bowline/config/":  "consul-kv:bowline/config/",
		"bowline/config":   "consul-kv:bowline/config/",
		"/bowline/config/": "consul-kv:bowline/config/",
	} {
		src, err := NewKV(KVConfig{Prefix: prefix}, nil)
		if err != nil {
			t.Fatalf("NewKV(%q): %v", prefix, err)
		}
		if src.Name() != name {
			t.Errorf("prefix %q: Name() = %q, want %q", prefix, src.Name(), name)
		}
	}
}

func TestConsulKVFiles(t *testing.T) {
	pairs := api.KVPairs{
		{Key: "bowline/config/", Value: nil}, // the folder itself
		{Key: "bowline/config/b.hcl", Value: []byte("b")},
		{Key: "bowline/config/a.hcl.json", Value: []byte("{}")},
		{Key: "bowline/config/sub/c.hcl", Value: []byte("c")},
		{Key: "bowline/config/sub/", Value: nil},
		{Key: "bowline/config/.hidden.hcl", Value: []byte("h")},
		{Key: "bowline/config/sub/.x.hcl", Value: []byte("x")},
		{Key: "bowline/config/readme.md", Value: []byte("r")},
		{Key: "bowline/config/x.json", Value: []byte("{}")},
		{Key: "bowline/configx/d.hcl", Value: []byte("d")}, // not under the prefix
		nil,
	}
	got := kvFiles("bowline/config/", pairs)
	want := []config.File{
		{Name: "consul-kv:bowline/config/a.hcl.json", Content: []byte("{}")},
		{Name: "consul-kv:bowline/config/b.hcl", Content: []byte("b")},
		{Name: "consul-kv:bowline/config/sub/c.hcl", Content: []byte("c")},
	}
	if !sameFileSet(got, want) {
		t.Fatalf("kvFiles:\n got %+v\nwant %+v", got, want)
	}
	if sameFileSet(want, want[:2]) || sameFileSet(want, []config.File{want[0], want[1], {Name: want[2].Name, Content: []byte("changed")}}) {
		t.Fatal("sameFileSet does not see a missing or changed file")
	}
}
