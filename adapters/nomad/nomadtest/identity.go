package nomadtest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// JWKSPath is where a Nomad agent serves the public keys of its keyring
// (unauthenticated, as Nomad serves it).
const JWKSPath = "/.well-known/jwks.json"

// Workload identities were not captured (the captured agent is 1.6): they
// follow Nomad's documentation for 1.7 and later, which signs them with an
// RSA key of the keyring (RS256, the key's ID in "kid") and serves the
// public keys as a JWKS.

// keyring is the signing key of every double in the process, made once.
var keyring = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })

// KeyID is the ID of the keyring's signing key (the JWT header's "kid").
const KeyID = "6b3f5c1e-2a4d-4e8f-9b1c-0d2e3f4a5b6c"

// Identity is a workload identity to mint: the claims Nomad gives a task
// (Task set) or a service (Service set).
type Identity struct {
	Namespace string // default "default"
	JobID     string
	Group     string // default JobID (only in "sub")
	AllocID   string
	Task      string
	Service   string
	// Audience is "aud" (Nomad's default identity has "nomadproject.io").
	Audience []string
	// TTL sets "exp" that long after IssuedAt; 0 leaves it out, as for an
	// identity without a ttl.
	TTL time.Duration
	// IssuedAt defaults to now.
	IssuedAt time.Time
	// Name is the identity's name (default "default"), the end of "sub".
	Name string
}

// MintIdentity returns the JWT Nomad would give a workload with identity
// id, signed by the keyring that the double's JWKS serves.
func (s *Server) MintIdentity(id Identity) string {
	s.t.Helper()
	key, err := keyring()
	if err != nil {
		s.t.Fatalf("nomadtest: keyring: %v", err)
	}
	return s.sign(id, key)
}

// ForgeIdentity returns a workload identity that names the keyring's key
// ID but is signed with another key, as a forger would.
func (s *Server) ForgeIdentity(id Identity) string {
	s.t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		s.t.Fatalf("nomadtest: key: %v", err)
	}
	return s.sign(id, key)
}

func (s *Server) sign(id Identity, key *rsa.PrivateKey) string {
	s.t.Helper()
	if id.Namespace == "" {
		id.Namespace = "default"
	}
	if id.Group == "" {
		id.Group = id.JobID
	}
	if id.Name == "" {
		id.Name = "default"
	}
	if id.IssuedAt.IsZero() {
		id.IssuedAt = time.Now()
	}
	who := id.Task
	if id.Service != "" {
		who = id.Service
	}
	claims := map[string]any{
		"aud":             jwt.Audience(id.Audience),
		"iat":             jwt.NewNumericDate(id.IssuedAt),
		"nbf":             jwt.NewNumericDate(id.IssuedAt),
		"jti":             fmt.Sprintf("%x", id.IssuedAt.UnixNano()),
		"sub":             fmt.Sprintf("global:%s:%s:%s:%s:%s", id.Namespace, id.JobID, id.Group, who, id.Name),
		"nomad_namespace": id.Namespace,
		"nomad_job_id":    id.JobID,
	}
	if id.AllocID != "" {
		claims["nomad_allocation_id"] = id.AllocID
	}
	if id.Task != "" {
		claims["nomad_task"] = id.Task
	}
	if id.Service != "" {
		claims["nomad_service"] = id.Service
	}
	if id.TTL > 0 {
		claims["exp"] = jwt.NewNumericDate(id.IssuedAt.Add(id.TTL))
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: KeyID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		s.t.Fatalf("nomadtest: signer: %v", err)
	}
	token, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		s.t.Fatalf("nomadtest: sign identity: %v", err)
	}
	return token
}

// serveJWKS answers GET /.well-known/jwks.json.
func (s *Server) serveJWKS(w http.ResponseWriter) {
	key, err := keyring()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: KeyID, Algorithm: string(jose.RS256), Use: "sig"}}}
	body, err := json.Marshal(set)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=3600")
	_, _ = w.Write(body)
}
