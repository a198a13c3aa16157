package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The signing service is served on the xDS port, which every workload
// already reaches: one unary method whose request and response are JSON
// documents carried in a google.protobuf.BytesValue (no generated code).
const (
	SignServiceName = "bowline.identity.v1.CertificateAuthority"
	signMethod      = "/" + SignServiceName + "/Sign"
	maxSignRequest  = 64 << 10
)

// SignRequest asks for a certificate: the claimed identity, its proof and a
// certificate signing request for a key the workload keeps.
type SignRequest struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Token     string `json:"token,omitempty"`
	// CSR is a PEM "CERTIFICATE REQUEST".
	CSR []byte `json:"csr"`
}

// SignResponse carries the signed certificate and the trust bundle.
type SignResponse struct {
	SPIFFEID string `json:"spiffe_id"`
	// CertChain is the leaf and any intermediates (PEM).
	CertChain []byte `json:"cert_chain"`
	// Roots is the trust bundle (PEM).
	Roots    []byte    `json:"roots"`
	NotAfter time.Time `json:"not_after"`
	// RenewAt is when the workload should ask again (half-life).
	RenewAt time.Time `json:"renew_at"`
}

// Signer is what the signing service needs (Authority implements it).
type Signer interface {
	Sign(ctx context.Context, c Claim, csrDER []byte) (*Certificate, error)
	RootsPEM() []byte
}

var _ Signer = (*Authority)(nil)

// signServer is the handler type of the service description.
type signServer interface {
	sign(ctx context.Context, req *SignRequest) (*SignResponse, error)
}

type signService struct{ s Signer }

// RegisterSignService serves the signing service on g.
func RegisterSignService(g grpc.ServiceRegistrar, s Signer) {
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: SignServiceName,
		HandlerType: (*signServer)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Sign",
			Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := &wrapperspb.BytesValue{}
				if err := dec(in); err != nil {
					return nil, err
				}
				if len(in.GetValue()) > maxSignRequest {
					return nil, status.Error(codes.InvalidArgument, "identity: request too large")
				}
				var req SignRequest
				if err := json.Unmarshal(in.GetValue(), &req); err != nil {
					return nil, status.Errorf(codes.InvalidArgument, "identity: decode request: %v", err)
				}
				resp, err := srv.(signServer).sign(ctx, &req)
				if err != nil {
					return nil, err
				}
				b, err := json.Marshal(resp)
				if err != nil {
					return nil, status.Errorf(codes.Internal, "identity: encode response: %v", err)
				}
				return wrapperspb.Bytes(b), nil
			},
		}},
	}, signService{s})
}

func (s signService) sign(ctx context.Context, req *SignRequest) (*SignResponse, error) {
	blk, _ := pem.Decode(req.CSR)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, status.Error(codes.InvalidArgument, "identity: csr must be a PEM CERTIFICATE REQUEST")
	}
	cert, err := s.s.Sign(ctx, Claim{Namespace: req.Namespace, Service: req.Service, Token: req.Token}, blk.Bytes)
	switch {
	case errors.Is(err, ErrUnproven):
		// The reason is logged on the server; the caller learns only that
		// its claim was not proven.
		return nil, status.Errorf(codes.PermissionDenied, "identity: the claim to be %s/%s is not proven", req.Namespace, req.Service)
	case errors.Is(err, ErrBadCSR):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, status.Error(codes.Unavailable, "identity: the certificate could not be issued")
	}
	return &SignResponse{
		SPIFFEID: cert.ID.String(), CertChain: cert.ChainPEM, Roots: s.s.RootsPEM(),
		NotAfter: cert.NotAfter, RenewAt: cert.RenewAt(),
	}, nil
}

// RequestSign calls the signing service.
func RequestSign(ctx context.Context, cc grpc.ClientConnInterface, req SignRequest) (*SignResponse, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("identity: encode request: %w", err)
	}
	out := &wrapperspb.BytesValue{}
	if err := cc.Invoke(ctx, signMethod, wrapperspb.Bytes(b), out); err != nil {
		return nil, fmt.Errorf("identity: sign: %w", err)
	}
	var resp SignResponse
	if err := json.Unmarshal(out.GetValue(), &resp); err != nil {
		return nil, fmt.Errorf("identity: decode response: %w", err)
	}
	return &resp, nil
}

// NewKeyAndCSR generates an ECDSA P-256 key (PEM, PKCS #8) and a certificate
// signing request for it (PEM). The request names no identity: the CA puts
// the proven one in the certificate.
func NewKeyAndCSR() (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: create CSR: %w", err)
	}
	if keyPEM, err = EncodeKey(key); err != nil {
		return nil, nil, err
	}
	return keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
