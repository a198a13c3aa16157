package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// DirStore keeps the CA state in one file, ca.json, in a directory (the
// server's data directory). The directory is created with mode 0700 and the
// file, which holds the CA's private key, with mode 0600; it is replaced
// atomically.
type DirStore struct {
	Dir string
}

var _ Store = DirStore{}

// StateFile is the name of the file DirStore keeps.
const StateFile = "ca.json"

func (d DirStore) path() string { return filepath.Join(d.Dir, StateFile) }

// Load implements Store. A state file readable by others is made private.
func (d DirStore) Load(context.Context) (*State, error) {
	b, err := os.ReadFile(d.path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoState
	}
	if err != nil {
		return nil, fmt.Errorf("identity: read CA state: %w", err)
	}
	if st, err := os.Stat(d.path()); err == nil && st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(d.path(), 0o600); err != nil {
			return nil, fmt.Errorf("identity: %s is readable by others and cannot be made private: %w", d.path(), err)
		}
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("identity: decode %s: %w", d.path(), err)
	}
	return &s, nil
}

// Save implements Store.
func (d DirStore) Save(_ context.Context, s *State) error {
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return fmt.Errorf("identity: create %s: %w", d.Dir, err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("identity: encode CA state: %w", err)
	}
	if err := writeFileAtomic(d.path(), b, 0o600); err != nil {
		return fmt.Errorf("identity: save CA state: %w", err)
	}
	return nil
}

// writeFileAtomic writes a file through a temporary file in the same
// directory and a rename, so that readers see the old or the new content,
// never a part.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// WriteFileAtomic writes a file atomically (temporary file and rename) with
// the given permissions; `bowline bootstrap grpc --cert-dir` writes the
// workload's certificate files with it.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	return writeFileAtomic(path, data, perm)
}
