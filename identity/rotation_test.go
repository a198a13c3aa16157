package identity_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/identity"
)

// TestRootRotation walks through the documented rotation steps (see
// docs/identity.md) and checks, at every step, that no certificate a
// workload may still hold stops verifying against the bundle it may hold:
// the condition for a rotation without an outage.
func TestIdentityRootRotation(t *testing.T) {
	const ttl = 24 * time.Hour
	ctx := context.Background()
	clk := newClock()
	store := &identity.MemStore{}
	ca := newCA(t, clk, store)
	changes, cancel := ca.Subscribe()
	defer cancel()
	web := serviceID(t, "default", "web")

	oldRoots := ca.Roots()
	oldLeaf, err := ca.Issue(web, ttl)
	if err != nil {
		t.Fatal(err)
	}
	oldSigner := ca.SignerSerial()

	// Nothing to activate or finish before a rotation starts.
	for _, p := range []identity.Phase{identity.PhaseActivate, identity.PhaseFinish, "sideways"} {
		if err := ca.Rotate(ctx, p, ttl, false); !errors.Is(err, identity.ErrRotation) {
			t.Errorf("Rotate(%s) before prepare: %v, want ErrRotation", p, err)
		}
	}

	// 1. Prepare: the new root joins the bundle; the old one still signs.
	if err := ca.Rotate(ctx, identity.PhasePrepare, ttl, false); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, changes)
	st := ca.Status()
	if len(st.Roots) != 2 || st.Next == "" || st.Signing != oldSigner || st.NextPhase != identity.PhaseActivate {
		t.Fatalf("after prepare: %+v", st)
	}
	if err := ca.Rotate(ctx, identity.PhasePrepare, ttl, false); !errors.Is(err, identity.ErrRotation) {
		t.Errorf("a second prepare: %v, want ErrRotation", err)
	}
	bundle1 := ca.Roots()
	mustVerify(t, "old leaf, new bundle", oldLeaf.Chain, bundle1, clk.Now())
	if l, _ := ca.Issue(web, ttl); l.Issuer != oldSigner {
		t.Error("the prepared root signs before it is activated")
	}

	// Activating at once is refused: workloads may not trust the new root.
	if err := ca.Rotate(ctx, identity.PhaseActivate, ttl, false); !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("early activate: %v, want ErrRotation", err)
	}
	// The state survives a restart in the middle of a rotation.
	ca = newCA(t, clk, store)
	changes, cancel = ca.Subscribe()
	defer cancel()
	if got := ca.Status(); got.Next != st.Next || len(got.Roots) != 2 {
		t.Fatalf("after restart: %+v, want %+v", got, st)
	}

	// 2. Activate, one lifetime later: the new root signs.
	clk.Add(ttl)
	if err := ca.Rotate(ctx, identity.PhaseActivate, ttl, false); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, changes)
	st = ca.Status()
	if st.Signing == oldSigner || st.Next != "" || len(st.Roots) != 2 || st.NextPhase != identity.PhaseFinish {
		t.Fatalf("after activate: %+v", st)
	}
	newLeaf, err := ca.Issue(web, ttl)
	if err != nil {
		t.Fatal(err)
	}
	// A workload that got the bundle of step 1 accepts the new leaf, and the
	// old leaf (still valid) verifies against the current bundle.
	mustVerify(t, "new leaf, bundle of step 1", newLeaf.Chain, bundle1, clk.Now())
	mustVerify(t, "new leaf, current bundle", newLeaf.Chain, ca.Roots(), clk.Now())
	lastOld := clk.Now().Add(-time.Second) // an old-root leaf issued just before activation
	mustVerify(t, "old leaf, current bundle", oldLeaf.Chain, ca.Roots(), lastOld)
	// Only a workload that never got the new bundle would refuse: that is
	// why activate waits.
	if _, err := verify(newLeaf.Chain, oldRoots, clk.Now()); err == nil {
		t.Error("the new leaf verifies against the old bundle: the test proves nothing")
	}

	if err := ca.Rotate(ctx, identity.PhaseFinish, ttl, false); !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("early finish: %v, want ErrRotation", err)
	}

	// 3. Finish, one more lifetime later: the old root leaves the bundle.
	clk.Add(ttl)
	if err := ca.Rotate(ctx, identity.PhaseFinish, ttl, false); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, changes)
	st = ca.Status()
	if len(st.Roots) != 1 || st.Roots[0] != st.Signing || st.NextPhase != "" {
		t.Fatalf("after finish: %+v", st)
	}
	fresh, _ := ca.Issue(web, ttl)
	mustVerify(t, "fresh leaf, final bundle", fresh.Chain, ca.Roots(), clk.Now())
	if _, err := verify(oldLeaf.Chain, ca.Roots(), clk.Now().Add(-2*ttl)); err == nil {
		t.Error("a leaf of the retired root still verifies")
	}
	if err := ca.Rotate(ctx, identity.PhaseFinish, ttl, false); !errors.Is(err, identity.ErrRotation) {
		t.Errorf("finish with one root: %v, want ErrRotation", err)
	}

	// Force skips the waits (an emergency rotation).
	if err := ca.Rotate(ctx, identity.PhasePrepare, ttl, false); err != nil {
		t.Fatal(err)
	}
	if err := ca.Rotate(ctx, identity.PhaseActivate, ttl, true); err != nil {
		t.Fatalf("forced activate: %v", err)
	}
	if err := ca.Rotate(ctx, identity.PhaseFinish, ttl, true); err != nil {
		t.Fatalf("forced finish: %v", err)
	}
	if store.Saves() != 7 {
		t.Errorf("store saved %d times, want 7 (creation and six phases)", store.Saves())
	}
}

func mustVerify(t *testing.T, what string, chain, roots []*x509.Certificate, at time.Time) {
	t.Helper()
	if _, err := verify(chain, roots, at); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func expectSignal(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no change signalled")
	}
}
