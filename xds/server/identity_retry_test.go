package server

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/xds/translate"
)

const platformToken = "platform-token-0123456789"

// platformAttestor checks tokens against a platform that may be down: then
// no claim can be decided.
type platformAttestor struct{ up atomic.Bool }

func (*platformAttestor) Name() string { return "platform" }

func (a *platformAttestor) Attest(_ context.Context, c identity.Claim) (spiffeid.ID, error) {
	if !a.up.Load() {
		return spiffeid.ID{}, errors.New("platform: connection refused")
	}
	if c.Token != platformToken {
		return spiffeid.ID{}, fmt.Errorf("%w: unknown token", identity.ErrUnproven)
	}
	return identity.ServiceID(spiffeid.RequireTrustDomainFromString(config.DefaultTrustDomain), c.Namespace, c.Service)
}

// A sidecar that connects while the platform is down gets its certificate
// once the platform answers, without reconnecting; a refused claim is
// dropped.
func TestIdentityUndecidedClaimIsRetried(t *testing.T) {
	att := &platformAttestor{}
	h := newIdentityHarnessWith(t, time.Hour, att)
	h.connect(t, tokenNode(t, "web-retry", "web", platformToken))
	h.connect(t, tokenNode(t, "api-retry", "api", "wrong-0123456789"))
	if got := h.secrets(t, "web-retry"); len(got) != 0 {
		t.Fatalf("secrets while the platform is down: %d", len(got))
	}
	h.secrets(t, "api-retry")
	h.srv.mu.Lock()
	pending := len(h.srv.ident.pending)
	h.srv.mu.Unlock()
	if pending != 2 {
		t.Fatalf("%d claims wait for a retry, want 2", pending)
	}

	att.up.Store(true)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s := h.secrets(t, "web-retry")[translate.SecretCert]; s != nil {
			if _, id := certSerial(t, s); id.String() != "spiffe://bowline.local/ns/default/svc/web" {
				t.Fatalf("certificate for %s", id)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the claim was not retried")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		h.srv.mu.Lock()
		pending = len(h.srv.ident.pending)
		h.srv.mu.Unlock()
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d claims still wait", pending)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := h.secrets(t, "api-retry"); len(got) != 0 {
		t.Fatalf("a refused claim got %d secrets", len(got))
	}
}
