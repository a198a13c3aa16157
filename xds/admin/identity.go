package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/bowlinemesh/bowline/identity"
)

// Identity is the part of the CA (identity.Authority) the API reads and
// drives.
type Identity interface {
	RootsPEM() []byte
	Issued() []identity.IssuedCert
	Rotate(ctx context.Context, phase identity.Phase, force bool) (identity.RotationStatus, error)
	CA() *identity.CA
}

var _ Identity = (*identity.Authority)(nil)

// HandleIdentity adds the CA's endpoints:
//
//	GET  /v1/ca/roots   the trust bundle (PEM)
//	GET  /v1/ca         the roots' serials and the state of a rotation
//	GET  /v1/certs      the unexpired certificates issued: serial, SPIFFE ID, validity (never keys)
//	POST /v1/ca/rotate  {"phase": "prepare"|"activate"|"finish", "force": false}
func (a *API) HandleIdentity(id Identity) {
	a.handle("GET /v1/ca/roots", func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, err := w.Write(id.RootsPEM())
		return err
	})
	a.handle("GET /v1/ca", func(w http.ResponseWriter, r *http.Request) error {
		return writeJSON(w, http.StatusOK, id.CA().Status())
	})
	a.handle("GET /v1/certs", func(w http.ResponseWriter, r *http.Request) error {
		return writeJSON(w, http.StatusOK, map[string]any{"certificates": id.Issued()})
	})
	a.handle("POST /v1/ca/rotate", func(w http.ResponseWriter, r *http.Request) error {
		var req struct {
			Phase identity.Phase `json:"phase"`
			Force bool           `json:"force"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			return &APIError{Code: http.StatusBadRequest, Message: "decode request: " + err.Error()}
		}
		st, err := id.Rotate(r.Context(), req.Phase, req.Force)
		if errors.Is(err, identity.ErrRotation) {
			return &APIError{Code: http.StatusConflict, Message: err.Error()}
		}
		if err != nil {
			return err
		}
		a.log.Info("admin: CA rotation phase done", "phase", req.Phase, "force", req.Force)
		return writeJSON(w, http.StatusOK, st)
	})
}
