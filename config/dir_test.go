package config_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/config"
)

func TestIsConfigFile(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"mesh.hcl", true},
		{"services.hcl.json", true},
		{"/etc/bowline/conf.d/10-web.hcl", true},
		{"/etc/bowline/.hidden/web.hcl", true}, // only the file's own name counts
		{".web.hcl", false},
		{".web.hcl.swp", false},
		{"/etc/bowline/.web.hcl", false},
		{"web.json", false},
		{"web.hcl.bak", false},
		{"web.hcl~", false},
		{"web.hcl.tmp", false},
		{"web.txt", false},
		{"hcl", false},
		{"web.tf", false},
	}
	for _, tt := range tests {
		if got := config.IsConfigFile(tt.name); got != tt.want {
			t.Errorf("IsConfigFile(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeAtomic writes content the way editors and config tools do: to a
// temporary file in the same directory, then renamed over the target.
func writeAtomic(t *testing.T, path, tmpName, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), tmpName)
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// contents maps base names to contents.
func contents(files []config.File) map[string]string {
	m := map[string]string{}
	for _, f := range files {
		m[filepath.Base(f.Name)] = string(f.Content)
	}
	return m
}

func TestReadDir(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "b.hcl"), "B")
	writeFile(t, filepath.Join(dir, "a.hcl.json"), "A")
	writeFile(t, filepath.Join(dir, "c.hcl"), "C")
	writeFile(t, filepath.Join(dir, ".hidden.hcl"), "hidden")
	writeFile(t, filepath.Join(dir, "notes.txt"), "notes")
	writeFile(t, filepath.Join(dir, "x.json"), "{}")
	writeFile(t, filepath.Join(dir, "c.hcl.bak"), "backup")
	if err := os.Mkdir(filepath.Join(dir, "sub.hcl"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "sub.hcl", "nested.hcl"), "nested")

	files, err := config.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Name)
	}
	want := []string{filepath.Join(dir, "a.hcl.json"), filepath.Join(dir, "b.hcl"), filepath.Join(dir, "c.hcl")}
	if !slices.Equal(names, want) {
		t.Errorf("ReadDir names = %v, want %v (sorted full paths, config files only, not recursive)", names, want)
	}
	if got := contents(files); !maps.Equal(got, map[string]string{"a.hcl.json": "A", "b.hcl": "B", "c.hcl": "C"}) {
		t.Errorf("ReadDir contents = %v", got)
	}

	if _, err := config.ReadDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("ReadDir of a missing directory succeeded")
	}
}

// dirWatch runs a DirSource and hands back what it sends.
type dirWatch struct {
	t    *testing.T
	out  chan config.FileSet
	prev map[string]string // the last good set received
}

func watchDir(t *testing.T, src *config.DirSource) *dirWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w := &dirWatch{t: t, out: make(chan config.FileSet)}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, w.out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("DirSource.Run returned %v after cancellation", err)
			}
		case <-time.After(waitLimit):
			t.Error("DirSource.Run did not return after cancellation")
		}
	})
	return w
}

// waitFor receives file sets until one satisfies ok, failing after
// waitLimit. Every set received is checked against ignored names.
func (w *dirWatch) waitFor(what string, ok func(config.FileSet) bool) config.FileSet {
	w.t.Helper()
	deadline := time.After(waitLimit)
	last := "none"
	for {
		select {
		case fs := <-w.out:
			for _, f := range fs.Files {
				if !config.IsConfigFile(f.Name) {
					w.t.Errorf("DirSource sent a file that is not configuration: %s", f.Name)
				}
			}
			// An unchanged set is not sent again (every send makes the
			// store rebuild), unless a failed read came in between.
			if fs.Err == nil {
				if w.prev != nil && maps.Equal(contents(fs.Files), w.prev) {
					w.t.Errorf("DirSource sent an unchanged set again: %v", w.prev)
				}
				w.prev = contents(fs.Files)
			} else {
				w.prev = nil
			}
			if ok(fs) {
				return fs
			}
			last = fmt.Sprintf("%v (err %v)", contents(fs.Files), fs.Err)
		case <-deadline:
			w.t.Fatalf("timed out waiting for %s; last set received: %s", what, last)
			return config.FileSet{}
		}
	}
}

func (w *dirWatch) waitForFiles(want map[string]string) {
	w.t.Helper()
	w.waitFor("files "+mapString(want), func(fs config.FileSet) bool {
		return fs.Err == nil && maps.Equal(contents(fs.Files), want)
	})
}

func mapString(m map[string]string) string {
	s := "{"
	for _, k := range slices.Sorted(maps.Keys(m)) {
		s += k + ":" + m[k] + " "
	}
	return s + "}"
}

func TestDirSourceFollowsChanges(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	writeFile(t, p("a.hcl"), "A1")

	// Polling is left out so that only change events can explain an update.
	src := &config.DirSource{Dir: dir, Log: quietLogger(), Poll: time.Hour}
	if src.Name() != "dir:"+dir {
		t.Errorf("Name() = %q", src.Name())
	}
	w := watchDir(t, src)
	w.waitForFiles(map[string]string{"a.hcl": "A1"})

	steps := []struct {
		name   string
		change func()
		want   map[string]string
	}{
		{
			name:   "write in place",
			change: func() { writeFile(t, p("a.hcl"), "A2") },
			want:   map[string]string{"a.hcl": "A2"},
		},
		{
			name:   "new file by atomic rename from a dotfile",
			change: func() { writeAtomic(t, p("b.hcl"), ".b.hcl.tmp", "B1") },
			want:   map[string]string{"a.hcl": "A2", "b.hcl": "B1"},
		},
		{
			name:   "existing file replaced by atomic rename",
			change: func() { writeAtomic(t, p("a.hcl"), "a.hcl.tmp-1234", "A3") },
			want:   map[string]string{"a.hcl": "A3", "b.hcl": "B1"},
		},
		{
			name: "ignored files, then a JSON file",
			change: func() {
				writeFile(t, p(".hidden.hcl"), "hidden")
				writeFile(t, p("notes.txt"), "notes")
				writeFile(t, p("x.json"), "{}")
				writeFile(t, p("b.hcl.bak"), "backup")
				if err := os.Mkdir(p("d.hcl"), 0o755); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(p("d.hcl"), "nested.hcl"), "nested")
				writeFile(t, p("c.hcl.json"), "C1")
			},
			want: map[string]string{"a.hcl": "A3", "b.hcl": "B1", "c.hcl.json": "C1"},
		},
		{
			name:   "file removed",
			change: func() { os.Remove(p("b.hcl")) },
			want:   map[string]string{"a.hcl": "A3", "c.hcl.json": "C1"},
		},
		{
			name: "file renamed away",
			change: func() {
				if err := os.Rename(p("a.hcl"), p("a.hcl.disabled")); err != nil {
					t.Fatal(err)
				}
			},
			want: map[string]string{"c.hcl.json": "C1"},
		},
	}
	for _, st := range steps {
		st.change()
		w.waitForFiles(st.want)
	}
}

func TestDirSourcePolls(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.hcl"), "A1")
	w := watchDir(t, &config.DirSource{Dir: dir, Poll: 10 * time.Millisecond})
	w.waitForFiles(map[string]string{"a.hcl": "A1"})
	// Let several polls find nothing new: none of them may send a set
	// (waitFor reports repeats). A correct source passes however long this is.
	time.Sleep(50 * time.Millisecond)
	writeAtomic(t, filepath.Join(dir, "a.hcl"), ".a.tmp", "A2")
	w.waitForFiles(map[string]string{"a.hcl": "A2"})
}

// After a failed read the source must send the files again once it can read
// them, even when they did not change meanwhile: the store keeps reporting
// the error until it receives a good set.
func TestDirSourceRecoversAfterReadError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "conf.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "a.hcl"), "A1")
	w := watchDir(t, &config.DirSource{Dir: dir, Poll: 10 * time.Millisecond})
	w.waitForFiles(map[string]string{"a.hcl": "A1"})

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	w.waitFor("a read error", func(fs config.FileSet) bool { return fs.Err != nil })

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "a.hcl"), "A1")
	w.waitForFiles(map[string]string{"a.hcl": "A1"})

	// Back to normal: unchanged polls send nothing, changes are sent once.
	time.Sleep(50 * time.Millisecond)
	writeAtomic(t, filepath.Join(dir, "a.hcl"), ".a.tmp", "A2")
	w.waitForFiles(map[string]string{"a.hcl": "A2"})
	writeAtomic(t, filepath.Join(dir, "b.hcl"), ".b.tmp", "B1")
	w.waitForFiles(map[string]string{"a.hcl": "A2", "b.hcl": "B1"})
}

func TestDirSourceMissingDirectory(t *testing.T) {
	src := &config.DirSource{Dir: filepath.Join(t.TempDir(), "missing")}
	if err := src.Run(t.Context(), make(chan config.FileSet, 1)); err == nil {
		t.Error("Run on a missing directory returned nil")
	}
}

// The store follows a directory end to end: a bad edit is rejected while
// the previous version keeps serving, and the fix is picked up.
func TestStoreFollowsDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "greeter.hcl")
	writeFile(t, path, issueForm)
	st := runStore(t, &config.DirSource{Dir: dir, Poll: time.Hour})
	select {
	case <-st.Ready():
	case <-time.After(waitLimit):
		t.Fatal("store never became ready")
	}
	wantServed(t, st.Current(), "default/greeter:50051")
	sub, cancel := st.Subscribe()
	defer cancel()
	<-sub

	waitConfig := func(what string, ok func(*config.Config) bool) *config.Config {
		t.Helper()
		deadline := time.After(waitLimit)
		for {
			select {
			case cfg := <-sub:
				if ok(cfg) {
					return cfg
				}
			case <-deadline:
				t.Fatalf("timed out waiting for %s", what)
				return nil
			}
		}
	}

	writeAtomic(t, path, ".greeter.hcl.swp", svcFile("greeter:0"))
	cfg := waitConfig("the rejection", func(c *config.Config) bool { return len(c.Status.Rejected) == 1 })
	wantServed(t, cfg, "default/greeter:50051")
	if r := cfg.Status.Rejected[0]; r.Name != path || r.Diagnostics[0].Subject.Filename != path {
		t.Errorf("rejection names %q / %q, want the file's path %q", r.Name, r.Diagnostics[0].Subject.Filename, path)
	}

	writeFile(t, path, svcFile("greeter:50052"))
	cfg = waitConfig("the fix", func(c *config.Config) bool { return len(c.Status.Rejected) == 0 })
	wantServed(t, cfg, "default/greeter:50052")
}
