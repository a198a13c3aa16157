package config

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"golang.org/x/sync/errgroup"
)

// FileSource delivers configuration files. Run sends the source's complete
// set of files each time it changes, and a FileSet with Err set when it cannot
// read them (the store then keeps that source's last files).
type FileSource interface {
	Name() string
	Run(ctx context.Context, out chan<- FileSet) error
}

// FileSet is the complete set of files of one source.
type FileSet struct {
	Source string
	Files  []File
	Err    error
}

// Store watches file sources and publishes the configuration in force.
type Store struct {
	log *slog.Logger

	mu       sync.Mutex
	loader   *loader
	sets     map[string][]File // latest files per source
	rejected map[string]Rejection
	hashes   map[string]hashedFile // content hash per file, kept between rebuilds
	errs     map[string]string     // source read errors
	current  *Config
	subs     map[int]chan *Config
	nextSub  int
	ready    chan struct{}
}

// NewStore returns a store with no configuration yet.
func NewStore(log *slog.Logger) *Store {
	return &Store{
		log:      log,
		loader:   newLoader(),
		sets:     map[string][]File{},
		rejected: map[string]Rejection{},
		hashes:   map[string]hashedFile{},
		errs:     map[string]string{},
		subs:     map[int]chan *Config{},
		ready:    make(chan struct{}),
	}
}

// Run runs the sources until ctx is cancelled. The first configuration is
// published once every source has delivered its first set.
func (s *Store) Run(ctx context.Context, sources ...FileSource) error {
	updates := make(chan FileSet)
	g, ctx := errgroup.WithContext(ctx)
	for _, src := range sources {
		g.Go(func() error {
			ch := make(chan FileSet)
			go func() {
				for fs := range ch {
					fs.Source = src.Name()
					select {
					case updates <- fs:
					case <-ctx.Done():
					}
				}
			}()
			err := src.Run(ctx, ch)
			close(ch)
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("config source %s: %w", src.Name(), err)
			}
			return nil
		})
	}
	g.Go(func() error {
		seen := map[string]bool{}
		if len(sources) == 0 {
			s.Update(FileSet{Source: "none"})
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case fs := <-updates:
				seen[fs.Source] = true
				s.record(fs)
				if len(seen) == len(sources) {
					s.rebuild()
				}
			}
		}
	})
	return g.Wait()
}

// Update applies one file set synchronously (for tests and one-shot loads).
func (s *Store) Update(fs FileSet) {
	s.record(fs)
	s.rebuild()
}

func (s *Store) record(fs FileSet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fs.Err != nil {
		if s.errs[fs.Source] == "" {
			s.log.Warn("config source failed; keeping its last files", "source", fs.Source, "err", fs.Err)
		}
		s.errs[fs.Source] = fs.Err.Error()
		return
	}
	delete(s.errs, fs.Source)
	s.sets[fs.Source] = fs.Files
}

// rebuild decodes changed files, keeps the last good version of each file that
// fails, and publishes the result when anything changed.
func (s *Store) rebuild() {
	s.mu.Lock()
	defer s.mu.Unlock()

	n := 0
	for _, files := range s.sets {
		n += len(files)
	}
	all := make(map[string]File, n)
	for _, src := range slices.Sorted(maps.Keys(s.sets)) {
		for _, f := range s.sets[src] {
			all[f.Name] = f
		}
	}
	// Forget files that are gone.
	for name := range s.loader.good {
		if _, ok := all[name]; !ok {
			s.loader.forget(name)
		}
	}
	for name := range s.loader.chunks {
		if _, ok := all[name]; !ok {
			s.loader.forget(name)
		}
	}
	for name := range s.hashes {
		if _, ok := all[name]; !ok {
			delete(s.hashes, name)
		}
	}
	hashes := make(map[string]string, len(all))
	for name, f := range all {
		hashes[name] = s.hashOf(f)
	}
	for name := range s.rejected {
		if _, ok := all[name]; !ok {
			delete(s.rejected, name)
		}
	}
	// Decode what changed.
	candidate := make(map[string]accepted, len(all))
	for name, f := range all {
		h := hashes[name]
		if g, ok := s.loader.good[name]; ok && g.hash == h {
			candidate[name] = g
			continue
		}
		// A version rejected on its own stays rejected; one rejected for a
		// conflict with another file is tried again, as the other file may
		// have changed.
		if r, ok := s.rejected[name]; ok && r.Hash == h && !r.crossFile {
			if g, ok := s.loader.good[name]; ok {
				candidate[name] = g
			}
			continue
		}
		frag, diags := s.loader.decode(f)
		if diags.HasErrors() {
			s.reject(f, h, diags, false)
			if g, ok := s.loader.good[name]; ok {
				candidate[name] = g
			}
			continue
		}
		candidate[name] = accepted{hash: h, frag: frag}
	}
	// Check across files; a file blamed by a cross-file error falls back to
	// its previous good version (or is left out) until the set is valid.
	// Files whose version is already in force come first, so that a conflict
	// is blamed on the file that introduces it, not on the one serving.
	inForce := func(name string) bool {
		g, ok := s.loader.good[name]
		return ok && g.hash == candidate[name].hash
	}
	var cfg *Config
	var names []string // the candidates in name order
	for range len(candidate) + 1 {
		frags := make(map[string]*fragment, len(candidate))
		for name, a := range candidate {
			frags[name] = a.frag
		}
		// The set in name order, as every replica builds it. A set valid in
		// that order is valid in any (conflicts are between files, whatever
		// their order); only a conflict needs the order that blames it right.
		names = slices.Sorted(maps.Keys(frags))
		named, diags := assembleOrdered(frags, names)
		if !diags.HasErrors() {
			cfg = named
			break
		}
		order := slices.SortedStableFunc(slices.Values(names), func(a, b string) int {
			if fa, fb := inForce(a), inForce(b); fa != fb {
				if fa {
					return -1
				}
				return 1
			}
			return 0
		})
		if _, diags = assembleOrdered(frags, order); !diags.HasErrors() {
			cfg = named
			break
		}
		blamed := map[string]hcl.Diagnostics{}
		for _, d := range diags {
			if d.Subject != nil && d.Severity == hcl.DiagError { // warnings blame nobody
				blamed[d.Subject.Filename] = append(blamed[d.Subject.Filename], d)
			}
		}
		for name, ds := range blamed {
			f := all[name]
			s.reject(f, hashes[name], ds, true)
			if g, ok := s.loader.good[name]; ok && g.hash != candidate[name].hash {
				candidate[name] = g
			} else {
				delete(candidate, name)
			}
		}
	}
	if cfg == nil {
		s.log.Error("config: no consistent configuration could be assembled; keeping the current one")
		return
	}
	for name, a := range candidate {
		s.loader.good[name] = a
		if a.hash == hashes[name] {
			delete(s.rejected, name) // its newest version is in force
		}
	}
	h, rules := sha256.New(), sha256.New()
	if len(names) > 0 {
		cfg.Status.Files = make([]FileStatus, 0, len(names))
	}
	for _, name := range names {
		h.Write([]byte(name))
		h.Write([]byte{0})
		h.Write([]byte(candidate[name].hash))
		if candidate[name].frag.hasRules() {
			rules.Write([]byte(name))
			rules.Write([]byte{0})
			rules.Write([]byte(candidate[name].hash))
		}
		cfg.Status.Files = append(cfg.Status.Files, FileStatus{Name: name, Hash: candidate[name].hash, Stale: s.rejected[name].Name != ""})
	}
	cfg.Version = hex.EncodeToString(h.Sum(nil)[:8])
	cfg.RulesVersion = hex.EncodeToString(rules.Sum(nil)[:8])
	for _, name := range slices.Sorted(maps.Keys(s.rejected)) {
		cfg.Status.Rejected = append(cfg.Status.Rejected, s.rejected[name])
	}
	if s.current != nil && s.current.Version == cfg.Version && sameRejections(s.current.Status.Rejected, cfg.Status.Rejected) {
		return
	}
	first := s.current == nil
	s.current = cfg
	if first {
		close(s.ready)
	}
	s.log.Info("configuration loaded", "version", cfg.Version, "files", len(cfg.Status.Files), "rejected", len(cfg.Status.Rejected))
	for _, ch := range s.subs {
		select {
		case <-ch:
		default:
		}
		ch <- cfg
	}
}

// hashedFile is a file's content and its hash.
type hashedFile struct {
	content []byte
	hash    string
}

// hashOf returns the hash of a file's content, hashing it only when it is
// not the content hashed last time (typically the very same slice, which
// compares equal at once).
func (s *Store) hashOf(f File) string {
	if h, ok := s.hashes[f.Name]; ok && bytes.Equal(h.content, f.Content) {
		return h.hash
	}
	h := hashOf(f.Content)
	s.hashes[f.Name] = hashedFile{content: f.Content, hash: h}
	return h
}

func (s *Store) reject(f File, hash string, diags hcl.Diagnostics, crossFile bool) {
	if r, ok := s.rejected[f.Name]; ok && r.Hash == hash {
		return
	}
	r := Rejection{Name: f.Name, Hash: hash, Diagnostics: diags, Source: f.Content, At: time.Now(), crossFile: crossFile}
	s.rejected[f.Name] = r
	s.log.Error("configuration file rejected; its last valid version keeps serving", "file", f.Name, "diagnostics", r.Text())
}

func sameRejections(a, b []Rejection) bool {
	return slices.EqualFunc(a, b, func(x, y Rejection) bool { return x.Name == y.Name && x.Hash == y.Hash })
}

// Current returns the configuration in force, or nil before the first load.
func (s *Store) Current() *Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Ready is closed when the first configuration is published.
func (s *Store) Ready() <-chan struct{} { return s.ready }

// SourceErrors reports the sources that currently fail to read, by name.
func (s *Store) SourceErrors() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.errs)
}

// Subscribe returns a channel that receives each new configuration (the
// newest wins when the reader is slow), starting with the current one.
func (s *Store) Subscribe() (<-chan *Config, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan *Config, 1)
	id := s.nextSub
	s.nextSub++
	s.subs[id] = ch
	if s.current != nil {
		ch <- s.current
	}
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.subs, id)
	}
}
