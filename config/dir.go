package config

import (
	"context"
	"fmt"
	"log/slog"
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
type DirSource struct {
	Dir string
	Log *slog.Logger
	// Poll is a safety net for file systems without change events (default 2s).
	Poll time.Duration
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
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", dir, err)
	}
	var files []File
	for _, e := range entries {
		if e.IsDir() || !IsConfigFile(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			if os.IsNotExist(err) {
				continue // renamed away between listing and reading
			}
			return nil, fmt.Errorf("config: read %s: %w", p, err)
		}
		files = append(files, File{Name: p, Content: b})
	}
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	return files, nil
}

// Run implements FileSource.
func (d *DirSource) Run(ctx context.Context, out chan<- FileSet) error {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	poll := d.Poll
	if poll <= 0 {
		poll = 2 * time.Second
	}
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
	send := func(force bool) error {
		files, err := ReadDir(d.Dir)
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
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if IsConfigFile(ev.Name) || ev.Op.Has(fsnotify.Rename) || ev.Op.Has(fsnotify.Remove) {
				debounce = time.After(50 * time.Millisecond)
			}
		case err, ok := <-w.Errors:
			if ok {
				log.Warn("config: watch error", "dir", d.Dir, "err", err)
			}
		case <-debounce:
			debounce = nil
			if err := send(false); err != nil {
				return nil
			}
		case <-ticker.C:
			if err := send(false); err != nil {
				return nil
			}
		}
	}
}

func sameFiles(a, b []File) bool {
	return slices.EqualFunc(a, b, func(x, y File) bool { return x.Name == y.Name && string(x.Content) == string(y.Content) })
}
