package identity_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bowlinemesh/bowline/identity"
)

// fixedAttestor answers every claim with err.
type fixedAttestor struct {
	name string
	err  error
}

func (f fixedAttestor) Name() string { return f.name }
func (f fixedAttestor) Attest(context.Context, identity.Claim) (spiffeid.ID, error) {
	return spiffeid.ID{}, f.err
}

func TestIdentityAttestorsOutcome(t *testing.T) {
	unproven := fixedAttestor{"a", fmt.Errorf("%w: not mine", identity.ErrUnproven)}
	mismatch := fixedAttestor{"b", fmt.Errorf("%w: for another service", identity.ErrMismatch)}
	down := fixedAttestor{"c", errors.New("backend unreachable")}
	claim := identity.Claim{Namespace: "default", Service: "web", Token: "t"}
	tests := []struct {
		name             string
		chain            identity.Attestors
		unproven, mismat bool
	}{
		{"all unproven", identity.Attestors{unproven, unproven}, true, false},
		{"a mismatch wins over an undecided attestor", identity.Attestors{unproven, down, mismatch}, true, true},
		{"an undecided attestor makes the claim undecided", identity.Attestors{unproven, down}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.chain.Attest(context.Background(), claim)
			if err == nil || errors.Is(err, identity.ErrUnproven) != tt.unproven || errors.Is(err, identity.ErrMismatch) != tt.mismat {
				t.Fatalf("err = %v; want unproven %t, mismatch %t", err, tt.unproven, tt.mismat)
			}
		})
	}
}
