package identity

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"
)

// ErrNoState is returned by Store.Load when nothing was saved yet.
var ErrNoState = errors.New("identity: no CA state stored")

// State is what the CA persists: its signing certificate and key and the
// trust bundle. Certificates and keys are PEM.
type State struct {
	// Cert is the signing CA certificate (a root for a generated CA).
	Cert []byte `json:"cert"`
	// Key is its private key (PKCS #8).
	Key []byte `json:"key"`
	// Roots is the trust bundle: every root the mesh trusts.
	Roots []byte `json:"roots"`
	// NextCert and NextKey are a root prepared by a rotation: trusted (it is
	// in Roots) but not signing yet.
	NextCert []byte `json:"next_cert,omitempty"`
	NextKey  []byte `json:"next_key,omitempty"`
	// PhaseAt is when the last rotation phase ran.
	PhaseAt time.Time `json:"phase_at,omitzero"`
}

// Clone returns a deep copy.
func (s *State) Clone() *State {
	c := *s
	c.Cert, c.Key, c.Roots = bytes.Clone(s.Cert), bytes.Clone(s.Key), bytes.Clone(s.Roots)
	c.NextCert, c.NextKey = bytes.Clone(s.NextCert), bytes.Clone(s.NextKey)
	return &c
}

// Store persists the CA's state: the data directory by default (DirStore),
// Consul KV or Vault when several servers share one CA. It is the only state
// a server keeps.
type Store interface {
	// Load returns the saved state, or ErrNoState.
	Load(ctx context.Context) (*State, error)
	// Save replaces the saved state.
	Save(ctx context.Context, s *State) error
}

// MemStore is a Store in memory, for tests.
type MemStore struct {
	mu    sync.Mutex
	state *State
	saves int
}

var _ Store = (*MemStore)(nil)

// Load implements Store.
func (m *MemStore) Load(context.Context) (*State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == nil {
		return nil, ErrNoState
	}
	return m.state.Clone(), nil
}

// Save implements Store.
func (m *MemStore) Save(_ context.Context, s *State) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state = s.Clone()
	m.saves++
	return nil
}

// Saves counts the calls to Save.
func (m *MemStore) Saves() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.saves
}
