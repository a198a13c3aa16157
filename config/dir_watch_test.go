package config_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/config"
)

// A file renamed into place is complete: it is read after Quiet, however
// long WriteQuiet is. A file written in place waits out WriteQuiet.
func TestDirSourceWaitsOutWritesNotRenames(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.hcl")
	writeFile(t, p, "A1")
	w := watchDir(t, &config.DirSource{Dir: dir, Poll: time.Hour, Quiet: 5 * time.Millisecond, WriteQuiet: time.Hour, MaxDelay: time.Hour})
	w.waitForFiles(map[string]string{"a.hcl": "A1"})

	writeAtomic(t, p, ".a.hcl.tmp", "A2")
	w.waitForFiles(map[string]string{"a.hcl": "A2"})
	writeAtomic(t, filepath.Join(dir, "b.hcl"), "b.hcl~", "B1")
	w.waitForFiles(map[string]string{"a.hcl": "A2", "b.hcl": "B1"})
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	w.waitForFiles(map[string]string{"b.hcl": "B1"})

	writeFile(t, filepath.Join(dir, "b.hcl"), "B2")
	select {
	case fs := <-w.out:
		t.Errorf("a file written in place was sent before WriteQuiet passed: %v", contents(fs.Files))
	case <-time.After(300 * time.Millisecond):
	}
}

// Changes that keep coming put a read off no longer than MaxDelay.
func TestDirSourceMaxDelay(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.hcl")
	writeFile(t, p, "A1")
	w := watchDir(t, &config.DirSource{Dir: dir, Poll: time.Hour, Quiet: time.Hour, WriteQuiet: time.Hour, MaxDelay: 20 * time.Millisecond})
	w.waitForFiles(map[string]string{"a.hcl": "A1"})
	writeFile(t, p, "A2")
	w.waitForFiles(map[string]string{"a.hcl": "A2"})
}

// A burst of changes is read, and sent, once.
func TestDirSourceCoalescesBursts(t *testing.T) {
	dir := t.TempDir()
	w := watchDir(t, &config.DirSource{Dir: dir, Poll: time.Hour, Quiet: 300 * time.Millisecond})
	w.waitForFiles(map[string]string{})
	want := map[string]string{}
	for i := range 5 {
		name := fmt.Sprintf("s%d.hcl", i)
		writeAtomic(t, filepath.Join(dir, name), "."+name+".tmp", name)
		want[name] = name
	}
	select {
	case fs := <-w.out:
		if !maps.Equal(contents(fs.Files), want) {
			t.Errorf("first set after the burst = %v, want %v", contents(fs.Files), want)
		}
	case <-time.After(waitLimit):
		t.Fatal("nothing sent")
	}
}

// Only the files that changed are read again: the others keep the content
// read before (the store then hashes nothing twice).
func TestDirSourceKeepsUnchangedFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.hcl"), "A1")
	writeFile(t, filepath.Join(dir, "b.hcl"), "B1")
	w := watchDir(t, &config.DirSource{Dir: dir, Poll: time.Hour})
	first := w.waitFor("both files", func(fs config.FileSet) bool { return len(fs.Files) == 2 })
	writeAtomic(t, filepath.Join(dir, "b.hcl"), ".b.tmp", "B2")
	next := w.waitFor("the change", func(fs config.FileSet) bool {
		return maps.Equal(contents(fs.Files), map[string]string{"a.hcl": "A1", "b.hcl": "B2"})
	})
	if &first.Files[0].Content[0] != &next.Files[0].Content[0] {
		t.Error("a.hcl, unchanged, was read again")
	}
}

// Configuration files that are links into a directory swapped by a rename,
// as Kubernetes mounts a ConfigMap: the swap is a change to every file.
func TestDirSourceFollowsLinkSwaps(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	version := func(n int, content string) {
		d := p(fmt.Sprintf("..v%d", n))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(d, "a.hcl"), content)
	}
	version(1, "A1")
	if err := os.Symlink("..v1", p("..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/a.hcl", p("a.hcl")); err != nil {
		t.Fatal(err)
	}
	w := watchDir(t, &config.DirSource{Dir: dir, Poll: time.Hour})
	w.waitForFiles(map[string]string{"a.hcl": "A1"})
	for n := 2; n <= 3; n++ {
		version(n, fmt.Sprintf("A%d", n))
		if err := os.Symlink(fmt.Sprintf("..v%d", n), p("..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(p("..data_tmp"), p("..data")); err != nil {
			t.Fatal(err)
		}
		w.waitForFiles(map[string]string{"a.hcl": fmt.Sprintf("A%d", n)})
	}
}

// Whatever happens in the directory, the watch ends up sending what reading
// the whole directory reads.
func TestDirSourceMatchesReadDir(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	w := watchDir(t, &config.DirSource{Dir: dir, Poll: time.Hour, WriteQuiet: 5 * time.Millisecond})
	w.waitForFiles(map[string]string{})
	r := rand.New(rand.NewPCG(3, 4))
	names := []string{"a.hcl", "b.hcl", "c.hcl.json", "d.hcl"}
	for step := range 40 {
		name := names[r.IntN(len(names))]
		content := fmt.Sprintf("step %d", step)
		switch op := r.IntN(6); op {
		case 0:
			writeFile(t, p(name), content)
		case 1:
			writeAtomic(t, p(name), "."+name+".tmp", content)
		case 2:
			os.Remove(p(name))
		case 3:
			os.Rename(p(name), p(name+".off"))
		case 4:
			os.Rename(p(name+".off"), p(name))
		case 5:
			// Noise around a real change.
			writeFile(t, p("notes.txt"), content)
			writeFile(t, p("."+name+".swp"), content)
			writeFile(t, p(name), content)
		}
		files, err := config.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if want := contents(files); !maps.Equal(want, w.prev) {
			w.waitForFiles(want)
		}
	}
}
