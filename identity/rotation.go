package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Phase is a step of a root rotation. A rotation replaces the generated root
// without an outage by never letting a workload meet a certificate it cannot
// verify:
//
//  1. PhasePrepare generates the next root and adds it to the trust bundle.
//     Every workload receives the bundle holding both roots (sidecars at once
//     over SDS, file-based workloads at their next renewal).
//  2. PhaseActivate, once every workload trusts the new root (one certificate
//     lifetime later), makes the new root sign. Sidecars get certificates
//     from the new root at once, other workloads at their next renewal;
//     certificates from the old root stay valid because the old root is
//     still in the bundle.
//  3. PhaseFinish, once every certificate from the old root has expired (one
//     more lifetime), removes the old root from the bundle.
type Phase string

// The phases of a rotation, in order.
const (
	PhasePrepare  Phase = "prepare"
	PhaseActivate Phase = "activate"
	PhaseFinish   Phase = "finish"
)

// ErrRotation wraps every reason a rotation step is refused.
var ErrRotation = errors.New("identity: rotation step refused")

// RotationStatus describes the CA's roots (POST /v1/ca/rotate answers it).
type RotationStatus struct {
	// Signing is the serial of the certificate that signs leaves.
	Signing string `json:"signing"`
	// Roots are the serials of the trusted roots.
	Roots []string `json:"roots"`
	// Next is the serial of a prepared, not yet signing, root.
	Next string `json:"next,omitempty"`
	// PhaseAt is when the last phase ran.
	PhaseAt time.Time `json:"phase_at,omitzero"`
	// NextPhase is the phase that may run next ("" when no rotation is
	// under way and a new one may start with prepare).
	NextPhase Phase `json:"next_phase,omitempty"`
}

// Status describes the CA's roots.
func (ca *CA) Status() RotationStatus {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	st := RotationStatus{Signing: serialOf(ca.signing)}
	for _, r := range ca.roots {
		st.Roots = append(st.Roots, serialOf(r))
	}
	if ca.next != nil {
		st.Next = serialOf(ca.next)
		st.NextPhase = PhaseActivate
	} else if len(ca.roots) > 1 && !ca.operator {
		st.NextPhase = PhaseFinish
	}
	if ca.state != nil {
		st.PhaseAt = ca.state.PhaseAt
	}
	return st
}

// Rotate runs one phase of a root rotation and persists the result. Unless
// force is set, a phase waits at least `wait` (the certificate lifetime)
// after the previous one, so that every workload has caught up.
func (ca *CA) Rotate(ctx context.Context, phase Phase, wait time.Duration, force bool) error {
	if ca.operator {
		return fmt.Errorf("%w: the CA is supplied by the operator; rotate it with the ca_cert_file, ca_key_file and ca_root_file settings (docs/identity.md)", ErrRotation)
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.now()
	st := ca.state.Clone()
	early := func(what string) error {
		if force || st.PhaseAt.IsZero() || !now.Before(st.PhaseAt.Add(wait)) {
			return nil
		}
		return fmt.Errorf("%w: %s; wait until %s (or force)", ErrRotation, what, st.PhaseAt.Add(wait).UTC().Format(time.RFC3339))
	}
	switch phase {
	case PhasePrepare:
		if len(st.NextCert) > 0 {
			return fmt.Errorf("%w: a next root is already prepared; activate it", ErrRotation)
		}
		cert, key, err := newRoot(ca.td, now)
		if err != nil {
			return err
		}
		keyPEM, err := EncodeKey(key)
		if err != nil {
			return err
		}
		st.NextCert, st.NextKey = EncodeCerts([]*x509.Certificate{cert}), keyPEM
		st.Roots = append(st.Roots, st.NextCert...)
	case PhaseActivate:
		if len(st.NextCert) == 0 {
			return fmt.Errorf("%w: no next root is prepared; run prepare first", ErrRotation)
		}
		if err := early("workloads may not trust the new root yet"); err != nil {
			return err
		}
		st.Cert, st.Key, st.NextCert, st.NextKey = st.NextCert, st.NextKey, nil, nil
	case PhaseFinish:
		if len(st.NextCert) > 0 {
			return fmt.Errorf("%w: the prepared root is not signing yet; activate it first", ErrRotation)
		}
		roots, err := ParseCerts(st.Roots)
		if err != nil {
			return err
		}
		if len(roots) < 2 {
			return fmt.Errorf("%w: the bundle holds only the signing root; nothing to retire", ErrRotation)
		}
		if err := early("certificates signed by the old root may still be valid"); err != nil {
			return err
		}
		st.Roots = st.Cert
	default:
		return fmt.Errorf("%w: unknown phase %q (want prepare, activate or finish)", ErrRotation, phase)
	}
	st.PhaseAt = now
	// Check the new state before it is saved: a state that does not load
	// must never reach the store.
	probe := &CA{td: ca.td, now: ca.now, extra: ca.extra}
	if err := probe.installState(st); err != nil {
		return err
	}
	if err := ca.store.Save(ctx, st); err != nil {
		return err
	}
	if err := ca.installState(st); err != nil {
		return err
	}
	ca.log.Info("identity: root rotation", "phase", phase, "signing", serialOf(ca.signing), "roots", len(ca.roots))
	ca.notifyLocked()
	return nil
}
