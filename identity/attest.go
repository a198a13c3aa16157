package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Claim is what a workload says it is, with its proof.
type Claim struct {
	Namespace string
	Service   string
	// Token is the proof: a join token from the server's configuration, a
	// Consul ACL token, a Nomad workload identity JWT or a Kubernetes
	// service account token (the attestors of package identity/attest). It
	// is never logged.
	Token string
}

func (c Claim) String() string { return c.Namespace + "/" + c.Service }

// ErrUnproven wraps every reason a claim is not accepted.
var ErrUnproven = errors.New("identity: identity not proven")

// ErrMismatch is a proof that is valid, but for another identity than the
// one claimed. It wraps ErrUnproven.
var ErrMismatch = fmt.Errorf("%w: the proof is for another identity", ErrUnproven)

// Attestor decides whether a claim is proven, and which SPIFFE ID it proves.
// Errors for unproven claims wrap ErrUnproven; other errors mean the
// attestor could not decide (its backend was unreachable).
type Attestor interface {
	Name() string
	Attest(ctx context.Context, c Claim) (spiffeid.ID, error)
}

// Attestors tries attestors in order: the first that proves the claim wins.
type Attestors []Attestor

var _ Attestor = Attestors(nil)

// Name implements Attestor.
func (as Attestors) Name() string { return "attestors" }

// Attest implements Attestor. With no attestor, nothing is proven. When
// none proves the claim, a proof for another identity (ErrMismatch) is the
// answer; else, when an attestor could not decide (its backend failed), the
// claim is undecided: the error does not wrap ErrUnproven, so that the
// workload is told to try again rather than that it is refused; else the
// claim is unproven.
func (as Attestors) Attest(ctx context.Context, c Claim) (spiffeid.ID, error) {
	if len(as) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: no attestor is configured", ErrUnproven)
	}
	var errs, undecided []error
	mismatch := false
	for _, a := range as {
		id, err := a.Attest(ctx, c)
		if err == nil {
			return id, nil
		}
		err = fmt.Errorf("%s: %w", a.Name(), err)
		errs = append(errs, err)
		mismatch = mismatch || errors.Is(err, ErrMismatch)
		if !errors.Is(err, ErrUnproven) {
			undecided = append(undecided, err)
		}
	}
	if len(undecided) > 0 && !mismatch {
		return spiffeid.ID{}, errors.Join(undecided...)
	}
	return spiffeid.ID{}, errors.Join(errs...)
}

// JoinToken is a token that proves one service's identity, kept as its
// SHA-256.
type JoinToken struct {
	Namespace string
	Service   string
	SHA256    [sha256.Size]byte
}

// HashToken is the SHA-256 of a token.
func HashToken(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }

// JoinTokens attests with join tokens from the server's configuration
// (identity { join_token "service" { … } }). A token proves the identity of
// the service it is declared for, and of no other.
type JoinTokens struct {
	td     spiffeid.TrustDomain
	tokens func() []JoinToken
}

var _ Attestor = (*JoinTokens)(nil)

// NewJoinTokens returns the attestor; tokens is called on every attestation
// so that configuration changes apply at once.
func NewJoinTokens(td spiffeid.TrustDomain, tokens func() []JoinToken) *JoinTokens {
	return &JoinTokens{td: td, tokens: tokens}
}

// Name implements Attestor.
func (j *JoinTokens) Name() string { return "join_token" }

// Attest implements Attestor. Every token is compared in constant time.
func (j *JoinTokens) Attest(_ context.Context, c Claim) (spiffeid.ID, error) {
	if c.Token == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: no token presented", ErrUnproven)
	}
	h := HashToken(c.Token)
	var mine, other bool
	for _, t := range j.tokens() {
		if subtle.ConstantTimeCompare(h[:], t.SHA256[:]) != 1 {
			continue
		}
		if t.Namespace == c.Namespace && t.Service == c.Service {
			mine = true
		} else {
			other = true
		}
	}
	switch {
	case mine:
		return ServiceID(j.td, c.Namespace, c.Service)
	case other:
		return spiffeid.ID{}, ErrMismatch
	}
	return spiffeid.ID{}, fmt.Errorf("%w: unknown join token", ErrUnproven)
}
