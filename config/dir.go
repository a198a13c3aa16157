package config

import (
	"cmp"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DirSource reads every *.hcl and *.hcl.json file of a directory (not
// recursively) and re-reads them when the directory changes, which covers
// in-place writes as well as editors' and tools' atomic renames.
//
// A change is read once the directory has been quiet for a moment, so that a
// burst of changes (an editor's temporary file and rename, a tool writing
// several files) is read, and sent, once: Quiet after the last change when
// configuration files were only created, renamed or removed (a file renamed
// into place is complete), WriteQuiet when one was written in place (a
// writer may pause between writes; reading too early would catch half a
// file). Only the files that changed are read again, unless the directory
// holds symbolic links to configuration (a Kubernetes ConfigMap swaps them
// all by renaming a directory), the watch lost events, or it is the poll.
type DirSource struct {
	Dir string
	Log *slog.Logger
	// Poll is a safety net for file systems without change events (default
	// 2s): the whole directory is read again that often.
	Poll time.Duration
	// Quiet is how long the directory must see no more changes before files
	// created, renamed into place or removed are read (default 5ms).
	Quiet time.Duration
	// WriteQuiet is how long the directory must see no more changes before a
	// file written in place is read (default 50ms).
	WriteQuiet time.Duration
	// MaxDelay bounds how long changes that keep coming put a read off
	// (default 500ms).
	MaxDelay time.Duration
}

// Name implements FileSource.
func (d *DirSource) Name() string { return "dir:" + d.Dir }

// IsConfigFile reports whether a file name is loaded as configuration.
func IsConfigFile(name string) bool {
	base := filepath.Base(name)
	if strings.HasPrefix(base, ".") {
		return false
	}
	return strings.HasSuffix(base, ".hcl") || strings.HasSuffix(base, ".hcl.json")
}

// ReadDir reads the configuration files of dir, ordered by name.
func ReadDir(dir string) ([]File, error) {
	files, _, err := readDir(dir)
	return files, err
}

// readDir is ReadDir, also telling whether a configuration file is a
// symbolic link.
func readDir(dir string) (files []File, links bool, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, false, fmt.Errorf("config: read %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.IsDir() || !IsConfigFile(e.Name()) {
			continue
		}
		links = links || e.Type()&fs.ModeSymlink != 0
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			if os.IsNotExist(err) {
				continue // renamed away between listing and reading
			}
			return nil, false, fmt.Errorf("config: read %s: %w", p, err)
		}
		files = append(files, File{Name: p, Content: b})
	}
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	return files, links, nil
}

// readFiles updates files (ordered by name) with the current content of the
// named files, as readDir would read them; the files not named keep their
// content. links is set when one of them is a symbolic link.
func readFiles(files []File, names []string) (out []File, links bool, err error) {
	out = slices.Clone(files)
	for _, name := range names {
		i, found := slices.BinarySearchFunc(out, name, func(f File, name string) int { return strings.Compare(f.Name, name) })
		var b []byte
		fi, err := os.Lstat(name)
		if err == nil && !fi.IsDir() {
			links = links || fi.Mode()&fs.ModeSymlink != 0
			b, err = os.ReadFile(name)
		}
		switch {
		case err == nil && fi.IsDir(), os.IsNotExist(err):
			if found {
				out = slices.Delete(out, i, i+1)
			}
		case err != nil:
			return nil, false, fmt.Errorf("config: read %s: %w", name, err)
		case found:
			out[i] = File{Name: name, Content: b}
		default:
			out = slices.Insert(out, i, File{Name: name, Content: b})
		}
	}
	return out, links, nil
}

// Run implements FileSource.
func (d *DirSource) Run(ctx context.Context, out chan<- FileSet) error {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	poll := cmp.Or(max(d.Poll, 0), 2*time.Second)
	quiet := cmp.Or(max(d.Quiet, 0), 5*time.Millisecond)
	writeQuiet := cmp.Or(max(d.WriteQuiet, 0), 50*time.Millisecond)
	maxDelay := cmp.Or(max(d.MaxDelay, 0), 500*time.Millisecond)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", d.Dir, err)
	}
	defer w.Close()
	if err := w.Add(d.Dir); err != nil {
		return fmt.Errorf("config: watch %s: %w", d.Dir, err)
	}
	var last []File
	failed := false // the last read failed: send the next good one even if unchanged
	links := false  // a configuration file is a symbolic link
	// What changed since the last read: the files named, or anything.
	dirty := map[string]bool{}
	everything := true
	send := func(force bool) error {
		var files []File
		var err error
		if everything || failed {
			files, links, err = readDir(d.Dir)
		} else {
			var l bool
			files, l, err = readFiles(last, slices.Sorted(maps.Keys(dirty)))
			links = links || l
		}
		clear(dirty)
		everything = false
		if err != nil {
			failed = true
			log.Warn("config: reading directory failed", "dir", d.Dir, "err", err)
			select {
			case out <- FileSet{Err: err}:
			case <-ctx.Done():
			}
			return nil
		}
		if !force && !failed && sameFiles(last, files) {
			return nil
		}
		last, failed = files, false
		select {
		case out <- FileSet{Files: files}:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	if err := send(true); err != nil {
		return err
	}
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	// The burst of changes being waited out.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var burstStart time.Time // zero: no burst
	wrote := false           // a configuration file was written in place
	dir := filepath.Clean(d.Dir)
	changed := func() {
		now := time.Now()
		if burstStart.IsZero() {
			burstStart = now
		}
		wait := quiet
		if wrote {
			wait = writeQuiet
		}
		timer.Reset(max(min(wait, maxDelay-now.Sub(burstStart)), 0))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			switch {
			case filepath.Clean(ev.Name) == dir || filepath.Dir(ev.Name) != dir:
				everything = true // the directory itself
			case IsConfigFile(ev.Name):
				dirty[filepath.Join(d.Dir, filepath.Base(ev.Name))] = true
				wrote = wrote || ev.Op.Has(fsnotify.Write)
			case !ev.Op.Has(fsnotify.Create) && !ev.Op.Has(fsnotify.Rename) && !ev.Op.Has(fsnotify.Remove):
				continue
			case links:
				// Configuration files are links: whatever they point to may
				// have been renamed or removed.
				everything = true
			default:
				continue // a file that is not configuration
			}
			changed()
		case err, ok := <-w.Errors:
			if ok {
				log.Warn("config: watch error", "dir", d.Dir, "err", err)
				everything = true // events may have been lost
				changed()
			}
		case <-timer.C:
			burstStart, wrote = time.Time{}, false
			if err := send(false); err != nil {
				return nil
			}
		case <-ticker.C:
			everything = true
			if err := send(false); err != nil {
				return nil
			}
		}
	}
}

func sameFiles(a, b []File) bool {
	return slices.EqualFunc(a, b, func(x, y File) bool { return x.Name == y.Name && string(x.Content) == string(y.Content) })
}
