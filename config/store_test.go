package config_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/config"
)

const waitLimit = 5 * time.Second

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// svcFile renders a file declaring services; each spec is "name:port" or
// "namespace/name:port", the port marking which version of a declaration is
// in force.
func svcFile(specs ...string) string {
	var b strings.Builder
	for _, spec := range specs {
		key, port, _ := strings.Cut(spec, ":")
		ns, name, ok := strings.Cut(key, "/")
		if !ok {
			ns, name = "default", key
		}
		fmt.Fprintf(&b, "service %q {\n  namespace = %q\n  endpoint {\n    address = \"10.0.0.1\"\n    port    = %s\n  }\n}\n", name, ns, port)
	}
	return b.String()
}

// served lists the services in force as "namespace/name:port" (first
// endpoint's port), sorted.
func served(cfg *config.Config) []string {
	var out []string
	for _, s := range cfg.Services {
		port := uint32(0)
		if len(s.Endpoints) > 0 {
			port = s.Endpoints[0].Port
		}
		out = append(out, fmt.Sprintf("%s/%s:%d", s.Namespace, s.Name, port))
	}
	slices.Sort(out)
	return out
}

func set(files ...config.File) config.FileSet { return config.FileSet{Source: "dir", Files: files} }

func newStore(t *testing.T) (*config.Store, <-chan *config.Config) {
	t.Helper()
	st := config.NewStore(quietLogger())
	sub, cancel := st.Subscribe()
	t.Cleanup(cancel)
	return st, sub
}

// next returns the configuration published since the last call, or nil.
func next(sub <-chan *config.Config) *config.Config {
	select {
	case c := <-sub:
		return c
	default:
		return nil
	}
}

func fileStatus(cfg *config.Config) map[string]config.FileStatus {
	m := map[string]config.FileStatus{}
	for _, f := range cfg.Status.Files {
		m[f.Name] = f
	}
	return m
}

func rejected(cfg *config.Config) map[string]config.Rejection {
	m := map[string]config.Rejection{}
	for _, r := range cfg.Status.Rejected {
		m[r.Name] = r
	}
	return m
}

func wantServed(t *testing.T, cfg *config.Config, want ...string) {
	t.Helper()
	if got := served(cfg); !slices.Equal(got, want) {
		t.Errorf("services in force = %v, want %v", got, want)
	}
}

func TestStoreAcceptsGoodFile(t *testing.T) {
	st, sub := newStore(t)
	if st.Current() != nil {
		t.Fatal("a new store has a configuration")
	}
	select {
	case <-st.Ready():
		t.Fatal("Ready closed before any file set")
	default:
	}
	st.Update(set(file("a.hcl", issueForm)))
	cfg := st.Current()
	if cfg == nil {
		t.Fatal("no configuration after a good file")
	}
	select {
	case <-st.Ready():
	default:
		t.Error("Ready not closed after the first configuration")
	}
	if got := next(sub); got != cfg {
		t.Error("subscriber did not receive the configuration")
	}
	wantServed(t, cfg, "default/greeter:50051")
	if cfg.Version == "" {
		t.Error("empty version")
	}
	fs := fileStatus(cfg)
	if len(fs) != 1 || fs["a.hcl"].Hash == "" || fs["a.hcl"].Stale {
		t.Errorf("Status.Files = %+v, want a.hcl in force and not stale", cfg.Status.Files)
	}
	if len(cfg.Status.Rejected) != 0 {
		t.Errorf("Status.Rejected = %+v, want none", cfg.Status.Rejected)
	}
	// A later subscriber starts with the current configuration.
	late, cancel := st.Subscribe()
	defer cancel()
	if got := next(late); got != cfg {
		t.Error("a new subscriber did not get the current configuration")
	}
}

func TestStoreKeepsLastGoodVersionOfAFile(t *testing.T) {
	st, sub := newStore(t)
	good := svcFile("greeter:50051", "other:7000")
	st.Update(set(file("a.hcl", good)))
	v1 := st.Current()
	next(sub)
	goodHash := fileStatus(v1)["a.hcl"].Hash

	// The same file made invalid: line 12 holds "port = 0".
	bad := svcFile("greeter:50052", "other:0")
	st.Update(set(file("a.hcl", bad)))
	cfg := st.Current()
	if got := next(sub); got != cfg {
		t.Error("a rejection was not published to subscribers")
	}
	wantServed(t, cfg, "default/greeter:50051", "default/other:7000")
	if cfg.Version != v1.Version {
		t.Errorf("version moved from %s to %s although the same files are in force", v1.Version, cfg.Version)
	}
	fs := fileStatus(cfg)["a.hcl"]
	if !fs.Stale || fs.Hash != goodHash {
		t.Errorf("file status = %+v, want stale at the good hash %s", fs, goodHash)
	}
	r, ok := rejected(cfg)["a.hcl"]
	if !ok {
		t.Fatalf("a.hcl not in Rejected: %+v", cfg.Status.Rejected)
	}
	if r.Hash == goodHash || r.At.IsZero() || string(r.Source) != bad {
		t.Errorf("rejection = hash %s at %v, want the bad version's hash, a time and its source", r.Hash, r.At)
	}
	dj := r.DiagnosticsJSON()
	if len(dj) != 1 || dj[0].Summary != "Invalid port" || dj[0].File != "a.hcl" || dj[0].Line != 12 || dj[0].Source != "    port    = 0" {
		t.Errorf("rejection diagnostics = %+v, want Invalid port at a.hcl:12 quoting the line", dj)
	}
	if txt := r.Text(); !strings.Contains(txt, "a.hcl:12:15") || !strings.Contains(txt, "Invalid port") {
		t.Errorf("rejection text lacks position or summary:\n%s", txt)
	}

	// The same bad content again changes nothing.
	st.Update(set(file("a.hcl", bad)))
	if got := next(sub); got != nil {
		t.Errorf("re-sending a rejected version published a configuration (%d rejections)", len(got.Status.Rejected))
	}
	if r2 := rejected(st.Current())["a.hcl"]; !r2.At.Equal(r.At) {
		t.Error("re-sending a rejected version replaced the rejection")
	}

	// Another bad version replaces the rejection.
	bad2 := "service \"greeter\" {\n  protocol = \"smtp\"\n}\n"
	st.Update(set(file("a.hcl", bad2)))
	cfg = st.Current()
	if next(sub) == nil {
		t.Error("a new rejection was not published")
	}
	if r := rejected(cfg)["a.hcl"]; string(r.Source) != bad2 || r.Diagnostics[0].Summary != "Invalid protocol" {
		t.Errorf("rejection = %+v, want the newest bad version", r)
	}
	wantServed(t, cfg, "default/greeter:50051", "default/other:7000")

	// Fixed: accepted, no longer stale, nothing rejected.
	st.Update(set(file("a.hcl", svcFile("greeter:50052", "other:7001"))))
	cfg = st.Current()
	if next(sub) != cfg {
		t.Error("the fixed version was not published")
	}
	wantServed(t, cfg, "default/greeter:50052", "default/other:7001")
	if cfg.Version == v1.Version {
		t.Error("version did not change with new content")
	}
	if fs := fileStatus(cfg)["a.hcl"]; fs.Stale || fs.Hash == goodHash {
		t.Errorf("file status = %+v, want the new version, not stale", fs)
	}
	if len(cfg.Status.Rejected) != 0 {
		t.Errorf("Rejected = %+v, want none", cfg.Status.Rejected)
	}

	// Back to the first content: back to the first version.
	st.Update(set(file("a.hcl", good)))
	if cfg := st.Current(); cfg.Version != v1.Version {
		t.Errorf("the first content again gives version %s, want %s", cfg.Version, v1.Version)
	}
}

func TestStoreRevertingToGoodVersionClearsRejection(t *testing.T) {
	st, _ := newStore(t)
	good := svcFile("greeter:50051")
	st.Update(set(file("a.hcl", good)))
	st.Update(set(file("a.hcl", "service {")))
	if len(st.Current().Status.Rejected) != 1 {
		t.Fatalf("syntax error not rejected: %+v", st.Current().Status)
	}
	st.Update(set(file("a.hcl", good)))
	cfg := st.Current()
	if len(cfg.Status.Rejected) != 0 || fileStatus(cfg)["a.hcl"].Stale {
		t.Errorf("after reverting: %+v, want nothing rejected or stale", cfg.Status)
	}
}

func TestStoreNewInvalidFileNeverContributes(t *testing.T) {
	st, _ := newStore(t)
	st.Update(set(file("a.hcl", svcFile("alpha:8000"))))
	v1 := st.Current()

	// b.hcl declares a valid service and an invalid one: the whole file is out.
	badB := svcFile("beta:8001", "gamma:70000")
	st.Update(set(file("a.hcl", svcFile("alpha:8000")), file("b.hcl", badB)))
	cfg := st.Current()
	wantServed(t, cfg, "default/alpha:8000")
	if cfg.Version != v1.Version {
		t.Errorf("version moved from %s to %s", v1.Version, cfg.Version)
	}
	if _, in := fileStatus(cfg)["b.hcl"]; in {
		t.Errorf("rejected new file listed in force: %+v", cfg.Status.Files)
	}
	if r, ok := rejected(cfg)["b.hcl"]; !ok || r.Diagnostics[0].Subject.Start.Line != 12 {
		t.Errorf("Rejected = %+v, want b.hcl with its bad port at line 12", cfg.Status.Rejected)
	}

	st.Update(set(file("a.hcl", svcFile("alpha:8000")), file("b.hcl", svcFile("beta:8001", "gamma:7000"))))
	wantServed(t, st.Current(), "default/alpha:8000", "default/beta:8001", "default/gamma:7000")
}

func TestStoreFirstLoadWithOnlyInvalidFiles(t *testing.T) {
	st, _ := newStore(t)
	st.Update(set(file("a.hcl", "service \"a\" {\n  port = 1\n}\n")))
	cfg := st.Current()
	if cfg == nil {
		t.Fatal("no configuration published; the server could not start and report the error")
	}
	if len(cfg.Services) != 0 || len(cfg.Status.Files) != 0 {
		t.Errorf("invalid file contributed: %+v", cfg)
	}
	if _, ok := rejected(cfg)["a.hcl"]; !ok {
		t.Errorf("a.hcl not rejected: %+v", cfg.Status)
	}
}

func TestStoreCrossFileDuplicate(t *testing.T) {
	tests := []struct {
		name       string
		before     []config.File // accepted first
		after      []config.File
		wantBlame  string
		wantServed []string
		wantStale  []string
	}{
		{
			name:       "new file sorting after the existing one",
			before:     []config.File{file("a.hcl", svcFile("greeter:1000", "alpha:1001"))},
			after:      []config.File{file("a.hcl", svcFile("greeter:1000", "alpha:1001")), file("b.hcl", svcFile("greeter:2000", "beta:2001"))},
			wantBlame:  "b.hcl",
			wantServed: []string{"default/alpha:1001", "default/greeter:1000"},
		},
		{
			name:       "new file sorting before the existing one",
			before:     []config.File{file("z.hcl", svcFile("greeter:1000", "zeta:1001"))},
			after:      []config.File{file("a.hcl", svcFile("greeter:2000", "alpha:2001")), file("z.hcl", svcFile("greeter:1000", "zeta:1001"))},
			wantBlame:  "a.hcl",
			wantServed: []string{"default/greeter:1000", "default/zeta:1001"},
		},
		{
			name: "existing file sorting after edited to duplicate",
			before: []config.File{
				file("a.hcl", svcFile("greeter:1000")),
				file("b.hcl", svcFile("beta:1001")),
			},
			after: []config.File{
				file("a.hcl", svcFile("greeter:1000")),
				file("b.hcl", svcFile("beta:2001", "greeter:2000")),
			},
			wantBlame:  "b.hcl",
			wantServed: []string{"default/beta:1001", "default/greeter:1000"},
			wantStale:  []string{"b.hcl"},
		},
		{
			name: "existing file sorting before edited to duplicate",
			before: []config.File{
				file("a.hcl", svcFile("alpha:1001")),
				file("z.hcl", svcFile("greeter:1000")),
			},
			after: []config.File{
				file("a.hcl", svcFile("alpha:2001", "greeter:2000")),
				file("z.hcl", svcFile("greeter:1000")),
			},
			wantBlame:  "a.hcl",
			wantServed: []string{"default/alpha:1001", "default/greeter:1000"},
			wantStale:  []string{"a.hcl"},
		},
		{
			name:   "two new files at once: the later name is blamed",
			before: nil,
			after: []config.File{
				file("a.hcl", svcFile("greeter:1000", "alpha:1001")),
				file("b.hcl", svcFile("greeter:2000", "beta:2001")),
			},
			wantBlame:  "b.hcl",
			wantServed: []string{"default/alpha:1001", "default/greeter:1000"},
		},
		{
			name:   "duplicate mesh block in a new file",
			before: []config.File{file("z.hcl", "mesh {\n  trust_domain = \"z.example\"\n}\n"+svcFile("zeta:1000"))},
			after: []config.File{
				file("a.hcl", svcFile("alpha:2000")+"mesh {\n  trust_domain = \"a.example\"\n}\n"),
				file("z.hcl", "mesh {\n  trust_domain = \"z.example\"\n}\n"+svcFile("zeta:1000")),
			},
			wantBlame:  "a.hcl",
			wantServed: []string{"default/zeta:1000"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, _ := newStore(t)
			if tt.before != nil {
				st.Update(set(tt.before...))
				if len(st.Current().Status.Rejected) != 0 {
					t.Fatalf("setup rejected: %s", st.Current().Status.Rejected[0].Text())
				}
			}
			st.Update(set(tt.after...))
			cfg := st.Current()
			wantServed(t, cfg, tt.wantServed...)
			rej := rejected(cfg)
			if got := slices.Sorted(maps.Keys(rej)); !slices.Equal(got, []string{tt.wantBlame}) {
				t.Fatalf("rejected files = %v, want [%s]", got, tt.wantBlame)
			}
			r := rej[tt.wantBlame]
			if len(r.Diagnostics) == 0 || !strings.HasPrefix(r.Diagnostics[0].Summary, "Duplicate") || r.Diagnostics[0].Subject.Filename != tt.wantBlame {
				t.Errorf("rejection diagnostics = %v, want a duplicate located in %s", r.Diagnostics, tt.wantBlame)
			}
			var stale []string
			for _, f := range cfg.Status.Files {
				if f.Stale {
					stale = append(stale, f.Name)
				}
			}
			if !slices.Equal(stale, tt.wantStale) {
				t.Errorf("stale files = %v, want %v", stale, tt.wantStale)
			}
		})
	}
}

func TestStoreCrossFileDuplicateKeepsPreviousMesh(t *testing.T) {
	st, _ := newStore(t)
	mesh := file("z.hcl", "mesh {\n  trust_domain = \"z.example\"\n}\n")
	st.Update(set(mesh))
	st.Update(set(file("a.hcl", "mesh {\n  trust_domain = \"a.example\"\n}\n"), mesh))
	if td := st.Current().Mesh.TrustDomain; td != "z.example" {
		t.Errorf("trust domain = %q, want the one in force before (z.example)", td)
	}
}

// A file rejected for a conflict with another file is accepted once the
// other file resolves the conflict, without being edited itself.
func TestStoreCrossFileConflictResolvedInOtherFile(t *testing.T) {
	a1 := file("a.hcl", svcFile("greeter:1000", "alpha:1001"))
	a2 := file("a.hcl", svcFile("alpha:1001"))
	tests := []struct {
		name    string
		initial []config.File
		b       config.File
	}{
		{"new file", []config.File{a1}, file("b.hcl", svcFile("greeter:2000", "beta:2001"))},
		{"edited file", []config.File{a1, file("b.hcl", svcFile("beta:1"))}, file("b.hcl", svcFile("greeter:2000", "beta:2001"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, _ := newStore(t)
			st.Update(set(tt.initial...))
			st.Update(set(a1, tt.b))
			r0, ok := rejected(st.Current())["b.hcl"]
			if !ok {
				t.Fatalf("b.hcl not rejected: %+v", st.Current().Status)
			}
			// An unrelated update leaves the conflict and its rejection as they are.
			st.Update(set(a1, tt.b, file("c.hcl", svcFile("gamma:3000"))))
			if r, ok := rejected(st.Current())["b.hcl"]; !ok || r.Hash != r0.Hash || !r.At.Equal(r0.At) {
				t.Fatalf("b.hcl's rejection changed while the conflict remains: %+v", st.Current().Status)
			}
			if got := served(st.Current()); !slices.Contains(got, "default/greeter:1000") || !slices.Contains(got, "default/gamma:3000") {
				t.Errorf("services in force = %v, want a.hcl's greeter and the new gamma", got)
			}

			st.Update(set(a2, tt.b))
			cfg := st.Current()
			wantServed(t, cfg, "default/alpha:1001", "default/beta:2001", "default/greeter:2000")
			if len(cfg.Status.Rejected) != 0 {
				t.Errorf("Rejected = %v, want none once the conflict is gone", slices.Sorted(maps.Keys(rejected(cfg))))
			}
			if fs := fileStatus(cfg)["b.hcl"]; fs.Stale {
				t.Error("b.hcl still stale")
			}
		})
	}
}

// Warnings are not errors: a file whose only diagnostics are warnings is
// never blamed for another file's cross-file error.
func TestStoreCrossFileErrorDoesNotBlameWarnings(t *testing.T) {
	st, _ := newStore(t)
	// A subset of a service nobody declares draws a warning, not an error.
	warned := file("a.hcl", "subset \"ghost\" \"v1\" {\n  labels = { version = \"v1\" }\n}\n")
	b := file("b.hcl", svcFile("greeter:1000"))
	st.Update(set(warned, b))
	cfg := st.Current()
	if len(cfg.Status.Rejected) != 0 || len(cfg.Warnings) == 0 {
		t.Fatalf("setup: want a.hcl accepted with a warning; rejected %v, warnings %v", slices.Sorted(maps.Keys(rejected(cfg))), cfg.Warnings)
	}
	version := cfg.Version

	st.Update(set(warned, b, file("c.hcl", svcFile("greeter:2000"))))
	cfg = st.Current()
	if got := slices.Sorted(maps.Keys(rejected(cfg))); !slices.Equal(got, []string{"c.hcl"}) {
		t.Errorf("rejected files = %v, want only c.hcl", got)
	}
	if _, in := fileStatus(cfg)["a.hcl"]; !in {
		t.Error("a.hcl was taken out of force for a warning")
	}
	if cfg.Version != version {
		t.Errorf("version moved from %s to %s", version, cfg.Version)
	}
	wantServed(t, cfg, "default/greeter:1000")
}

func TestStoreDeletingFiles(t *testing.T) {
	st, sub := newStore(t)
	a := file("a.hcl", svcFile("alpha:1000"))
	b := file("b.hcl", svcFile("beta:1000"))
	c := file("c.hcl", svcFile("gamma:1000"))
	st.Update(set(a, b, c))
	wantServed(t, st.Current(), "default/alpha:1000", "default/beta:1000", "default/gamma:1000")

	// b gets a rejected newer version (stale), c is replaced by a bad new file.
	st.Update(set(a, file("b.hcl", "service {"), c, file("d.hcl", "nonsense")))
	if got := len(st.Current().Status.Rejected); got != 2 {
		t.Fatalf("%d rejections, want 2", got)
	}
	next(sub)

	st.Update(set(a, c))
	cfg := st.Current()
	if next(sub) != cfg {
		t.Error("deleting files published nothing")
	}
	wantServed(t, cfg, "default/alpha:1000", "default/gamma:1000")
	if len(cfg.Status.Rejected) != 0 {
		t.Errorf("deleted files still listed as rejected: %+v", cfg.Status.Rejected)
	}
	if got := slices.Sorted(maps.Keys(fileStatus(cfg))); !slices.Equal(got, []string{"a.hcl", "c.hcl"}) {
		t.Errorf("files in force = %v, want [a.hcl c.hcl]", got)
	}

	st.Update(set())
	cfg = st.Current()
	if len(cfg.Services) != 0 || len(cfg.Status.Files) != 0 {
		t.Errorf("after deleting every file: %+v", cfg)
	}

	// A deleted file that comes back with the content it had is accepted.
	st.Update(set(b))
	wantServed(t, st.Current(), "default/beta:1000")
}

func TestStoreVersionIsContentDerived(t *testing.T) {
	a := file("a.hcl", svcFile("alpha:1000"))
	b := file("b.hcl", svcFile("beta:1000"))

	one := config.NewStore(quietLogger())
	one.Update(set(a, b))

	two := config.NewStore(quietLogger())
	two.Update(set(b))
	two.Update(set(file("a.hcl", "broken {"), b))
	two.Update(set(file("a.hcl", svcFile("alpha:9999")), b))
	two.Update(set(b, a)) // another order

	if v1, v2 := one.Current().Version, two.Current().Version; v1 != v2 {
		t.Errorf("same files, different history: version %s != %s", v1, v2)
	}

	renamed := config.NewStore(quietLogger())
	renamed.Update(set(file("c.hcl", svcFile("alpha:1000")), b))
	if renamed.Current().Version == one.Current().Version {
		t.Error("a renamed file leaves the version unchanged")
	}
}

func TestStoreSourceErrorKeepsFiles(t *testing.T) {
	st, sub := newStore(t)
	st.Update(set(file("a.hcl", svcFile("alpha:1000"))))
	before := st.Current()
	next(sub)

	st.Update(config.FileSet{Source: "dir", Err: errors.New("permission denied")})
	if st.Current() != before {
		t.Error("a source error replaced the configuration")
	}
	if got := next(sub); got != nil {
		t.Error("a source error published a configuration")
	}
	if errs := st.SourceErrors(); errs["dir"] != "permission denied" {
		t.Errorf("SourceErrors = %v, want dir: permission denied", errs)
	}

	st.Update(set(file("a.hcl", svcFile("alpha:1000"))))
	if errs := st.SourceErrors(); len(errs) != 0 {
		t.Errorf("SourceErrors = %v after the source recovered, want none", errs)
	}
}

func TestStoreCombinesSources(t *testing.T) {
	st, _ := newStore(t)
	st.Update(config.FileSet{Source: "dir", Files: []config.File{file("/etc/bowline/a.hcl", svcFile("alpha:1000"))}})
	st.Update(config.FileSet{Source: "consul-kv", Files: []config.File{file("bowline/b.hcl", svcFile("beta:1000"))}})
	wantServed(t, st.Current(), "default/alpha:1000", "default/beta:1000")

	st.Update(config.FileSet{Source: "consul-kv"})
	wantServed(t, st.Current(), "default/alpha:1000")

	// A failing source keeps its last files while the other changes.
	st.Update(config.FileSet{Source: "consul-kv", Files: []config.File{file("bowline/b.hcl", svcFile("beta:1000"))}})
	st.Update(config.FileSet{Source: "consul-kv", Err: errors.New("unreachable")})
	st.Update(config.FileSet{Source: "dir", Files: []config.File{file("/etc/bowline/a.hcl", svcFile("alpha:2000"))}})
	wantServed(t, st.Current(), "default/alpha:2000", "default/beta:1000")
}

// fakeFileSource forwards the file sets the test puts on its channel.
type fakeFileSource struct {
	name string
	sets chan config.FileSet
}

func (f *fakeFileSource) Name() string { return f.name }

func (f *fakeFileSource) Run(ctx context.Context, out chan<- config.FileSet) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case fs := <-f.sets:
			select {
			case out <- fs:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

func (f *fakeFileSource) send(t *testing.T, fs config.FileSet) {
	t.Helper()
	select {
	case f.sets <- fs:
	case <-time.After(waitLimit):
		t.Fatalf("source %s: the store did not take the file set", f.name)
	}
}

func runStore(t *testing.T, sources ...config.FileSource) *config.Store {
	t.Helper()
	st := config.NewStore(quietLogger())
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx, sources...) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Store.Run returned %v after cancellation", err)
			}
		case <-time.After(waitLimit):
			t.Error("Store.Run did not return after cancellation")
		}
	})
	return st
}

func TestStoreRunWaitsForEverySource(t *testing.T) {
	dir := &fakeFileSource{name: "dir", sets: make(chan config.FileSet)}
	kv := &fakeFileSource{name: "kv", sets: make(chan config.FileSet)}
	st := runStore(t, dir, kv)

	// Three sends from one source: the third is only taken once the first
	// was handled completely.
	for range 3 {
		dir.send(t, config.FileSet{Files: []config.File{file("a.hcl", svcFile("alpha:1000"))}})
	}
	select {
	case <-st.Ready():
		t.Fatal("ready before every source delivered")
	default:
	}
	if st.Current() != nil {
		t.Fatal("configuration published before every source delivered")
	}

	kv.send(t, config.FileSet{Err: errors.New("kv unreachable")})
	select {
	case <-st.Ready():
	case <-time.After(waitLimit):
		t.Fatal("not ready after every source delivered")
	}
	wantServed(t, st.Current(), "default/alpha:1000")
	if errs := st.SourceErrors(); errs["kv"] != "kv unreachable" {
		t.Errorf("SourceErrors = %v, want the kv source named by its Name()", errs)
	}

	sub, cancel := st.Subscribe()
	defer cancel()
	<-sub
	kv.send(t, config.FileSet{Files: []config.File{file("kv/b.hcl", svcFile("beta:1000"))}})
	select {
	case cfg := <-sub:
		wantServed(t, cfg, "default/alpha:1000", "default/beta:1000")
	case <-time.After(waitLimit):
		t.Fatal("no configuration after the second source's files")
	}
}

func TestStoreRunWithoutSources(t *testing.T) {
	st := runStore(t)
	select {
	case <-st.Ready():
	case <-time.After(waitLimit):
		t.Fatal("a store without sources never became ready")
	}
	if cfg := st.Current(); cfg == nil || len(cfg.Services) != 0 || cfg.Mesh.TrustDomain != config.DefaultTrustDomain {
		t.Errorf("empty store configuration = %+v", cfg)
	}
}

func TestStoreRunStopsOnSourceError(t *testing.T) {
	sentinel := errors.New("bad source")
	st := config.NewStore(quietLogger())
	err := st.Run(t.Context(), failingSource{sentinel})
	if !errors.Is(err, sentinel) {
		t.Errorf("Run = %v, want it to wrap %v", err, sentinel)
	}
}

type failingSource struct{ err error }

func (failingSource) Name() string { return "failing" }

func (f failingSource) Run(context.Context, chan<- config.FileSet) error { return f.err }

// RulesVersion follows the files that declare more than services: a change
// to a services-only file leaves it (the catalog carries that change), a
// change to any other file, or a services file gaining a rule, moves it.
func TestStoreRulesVersion(t *testing.T) {
	const route = "route \"greeter\" {\n  rule {\n    destination {\n      service = \"greeter\"\n    }\n  }\n}\n"
	const route2 = "route \"greeter\" {\n  rule {\n    timeout = \"2s\"\n    destination {\n      service = \"greeter\"\n    }\n  }\n}\n"
	st, _ := newStore(t)
	steps := []struct {
		name      string
		files     []config.File
		wantMoved bool
	}{
		{"first", []config.File{file("svc.hcl", svcFile("greeter:1")), file("rules.hcl", route)}, true},
		{"services-only file changes", []config.File{file("svc.hcl", svcFile("greeter:2")), file("rules.hcl", route)}, false},
		{"a services-only file appears", []config.File{file("svc.hcl", svcFile("greeter:2")), file("more.hcl", svcFile("web:3")), file("rules.hcl", route)}, false},
		{"the rules file changes", []config.File{file("svc.hcl", svcFile("greeter:2")), file("more.hcl", svcFile("web:3")), file("rules.hcl", route2)}, true},
		{"a services file gains a rule", []config.File{file("svc.hcl", svcFile("greeter:2")+route), file("more.hcl", svcFile("web:3"))}, true},
		{"services change in a file with rules", []config.File{file("svc.hcl", svcFile("greeter:4")+route), file("more.hcl", svcFile("web:3"))}, true},
	}
	prev := ""
	for _, s := range steps {
		st.Update(set(s.files...))
		cfg := st.Current()
		if len(cfg.Status.Rejected) != 0 {
			t.Fatalf("%s: rejected %+v", s.name, cfg.Status.Rejected)
		}
		if cfg.RulesVersion == "" {
			t.Fatalf("%s: empty RulesVersion", s.name)
		}
		if moved := cfg.RulesVersion != prev; moved != s.wantMoved {
			t.Errorf("%s: RulesVersion moved = %t, want %t", s.name, moved, s.wantMoved)
		}
		prev = cfg.RulesVersion
	}
}

// A large file edited one service at a time (decoded in chunks): every
// change is served, a bad edit is rejected naming its own line while the
// last good version serves, and a conflict names the moved declaration's
// line.
func TestStoreEditsOneServiceOfALargeFile(t *testing.T) {
	st, sub := newStore(t)
	specs := make([]string, 30)
	for i := range specs {
		specs[i] = fmt.Sprintf("s%02d:%d", i, 1000+i)
	}
	// svcFile renders each service on 7 lines: service k starts on line 7k+1
	// and its port is on line 7k+5.
	st.Update(set(file("big.hcl", svcFile(specs...))))
	if cfg := next(sub); len(cfg.Services) != 30 {
		t.Fatalf("%d services", len(cfg.Services))
	}

	specs[20] = "s20:2020"
	st.Update(set(file("big.hcl", svcFile(specs...))))
	cfg := next(sub)
	if got := served(cfg); got[20] != "default/s20:2020" || got[19] != "default/s19:1019" {
		t.Fatalf("served %v", got)
	}

	specs[25] = "s25:0"
	st.Update(set(file("big.hcl", svcFile(specs...))))
	cfg = next(sub)
	r := rejected(cfg)["big.hcl"]
	if len(r.Diagnostics) != 1 || r.Diagnostics[0].Subject.Start.Line != 7*25+5 || !strings.Contains(r.Diagnostics[0].Detail, "port") {
		t.Fatalf("rejection %q, want the port of s25 on line %d", r.Text(), 7*25+5)
	}
	if got := served(cfg); got[25] != "default/s25:1025" || got[20] != "default/s20:2020" {
		t.Fatalf("served %v, want the last good version", got)
	}

	// Fixed, with a comment line on top (every declaration moves down a
	// line), and another file declaring s28 again.
	specs[25] = "s25:2025"
	st.Update(set(file("big.hcl", "# the registry\n"+svcFile(specs...)), file("other.hcl", svcFile("s28:3000"))))
	cfg = next(sub)
	r = rejected(cfg)["other.hcl"]
	if len(r.Diagnostics) != 1 || !strings.Contains(r.Diagnostics[0].Detail, fmt.Sprintf("big.hcl:%d,", 7*28+2)) {
		t.Fatalf("rejection %q, want the duplicate of s28 declared at big.hcl:%d", r.Text(), 7*28+2)
	}
	if got := served(cfg); len(got) != 30 || got[25] != "default/s25:2025" || got[28] != "default/s28:1028" {
		t.Fatalf("served %v", got)
	}
	for _, s := range cfg.Services {
		var n int
		fmt.Sscanf(s.Name, "s%d", &n)
		if s.DeclRange.Start.Line != 7*n+2 {
			t.Errorf("%s declared on line %d, want %d", s.Name, s.DeclRange.Start.Line, 7*n+2)
		}
	}
}
