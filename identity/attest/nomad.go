package attest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/hashicorp/nomad/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bowlinemesh/bowline/identity"
)

// JWKSPath is where a Nomad agent serves the public keys of the cluster's
// keyring.
const JWKSPath = "/.well-known/jwks.json"

// NomadConfig configures the Nomad workload identity attestor.
type NomadConfig struct {
	TrustDomain spiffeid.TrustDomain
	// Audience must be among the JWT's audiences ("aud"): the identity's
	// `aud` in the job (required; use one for Bowline alone, such as
	// "bowline").
	Audience string
	// JWKSURL is where the signing keys are read; empty means
	// Address + JWKSPath.
	JWKSURL string
	// Address of Nomad's HTTP API, where the allocation a task identity
	// names is read (empty: task identities prove nothing, only service
	// identities do). Token needs read-job in the workloads' namespaces.
	Address, Token, Region string
	// CAFile, CertFile and KeyFile configure TLS to Nomad (the JWKS too).
	CAFile, CertFile, KeyFile string
	// HTTPClient, when set, carries every request as is.
	HTTPClient *http.Client
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Nomad attests with Nomad workload identities: JWTs that Nomad signs with
// its keyring, given to a task with an `identity` block (file = true or
// env = true). The JWT must verify against the keys of the JWKS (signature,
// key ID), carry an expiry (give the identity a ttl) that has not passed,
// and name the configured audience. Then:
//
//   - a service identity (claim nomad_service) proves the service it names
//     in its namespace (nomad_namespace);
//   - a task identity (claim nomad_task, the default kind and the only one
//     a task can read) proves the services its allocation's group declares:
//     the allocation (nomad_allocation_id) is read from Nomad's API and must
//     be of the token's namespace and job, still running, and its group (or
//     one of the group's tasks) must have a service block named as claimed.
//
// A valid identity of another namespace, or whose allocation declares no
// such service, is a mismatch (identity.ErrMismatch).
type Nomad struct {
	td       spiffeid.TrustDomain
	audience string
	keys     *jwks
	api      *api.Client // nil without an address
	now      func() time.Time
}

var _ identity.Attestor = (*Nomad)(nil)

// NewNomad returns the attestor; it contacts nothing yet.
func NewNomad(cfg NomadConfig) (*Nomad, error) {
	if cfg.Audience == "" {
		return nil, errors.New("attest: nomad: an audience is required")
	}
	addr := strings.TrimSuffix(cfg.Address, "/")
	if cfg.JWKSURL == "" {
		if addr == "" {
			return nil, errors.New("attest: nomad: set the JWKS URL or Nomad's address")
		}
		cfg.JWKSURL = addr + JWKSPath
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		hc = &http.Client{Transport: tr, Timeout: 10 * time.Second}
		if err := api.ConfigureTLS(hc, &api.TLSConfig{CACert: cfg.CAFile, ClientCert: cfg.CertFile, ClientKey: cfg.KeyFile}); err != nil {
			return nil, fmt.Errorf("attest: nomad: TLS: %w", err)
		}
	}
	n := &Nomad{td: cfg.TrustDomain, audience: cfg.Audience, now: cfg.Now, keys: &jwks{url: cfg.JWKSURL, http: hc, now: cfg.Now}}
	if addr != "" {
		client, err := api.NewClient(&api.Config{Address: addr, SecretID: cfg.Token, Region: cfg.Region, HttpClient: hc})
		if err != nil {
			return nil, fmt.Errorf("attest: nomad: client for %s: %w", addr, err)
		}
		n.api = client
	}
	return n, nil
}

// Name implements identity.Attestor.
func (n *Nomad) Name() string { return "nomad" }

// nomadClaims are the claims Nomad adds to a workload identity.
type nomadClaims struct {
	Namespace string `json:"nomad_namespace"`
	JobID     string `json:"nomad_job_id"`
	AllocID   string `json:"nomad_allocation_id"`
	Task      string `json:"nomad_task"`
	Service   string `json:"nomad_service"`
}

// Attest implements identity.Attestor.
func (n *Nomad) Attest(ctx context.Context, c identity.Claim) (spiffeid.ID, error) {
	if c.Token == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: no token presented", identity.ErrUnproven)
	}
	var nc nomadClaims
	tok, err := parseJWT(c.Token, &nc)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if nc.Namespace == "" || nc.JobID == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: not a Nomad workload identity", identity.ErrUnproven)
	}
	key, err := n.keys.key(ctx, tok.Headers[0].KeyID)
	if err != nil {
		return spiffeid.ID{}, err
	}
	var std jwt.Claims
	if err := tok.Claims(key.Key, &std, &nc); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: the JWT's signature does not verify", identity.ErrUnproven)
	}
	if std.Expiry == nil {
		return spiffeid.ID{}, fmt.Errorf("%w: the workload identity does not expire (give it a ttl)", identity.ErrUnproven)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{AnyAudience: jwt.Audience{n.audience}, Time: n.now()}, jwt.DefaultLeeway); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: workload identity of %s/%s: %v", identity.ErrUnproven, nc.Namespace, nc.JobID, err)
	}
	if nc.Namespace != c.Namespace {
		return spiffeid.ID{}, fmt.Errorf("%w: workload identity of namespace %s", identity.ErrMismatch, nc.Namespace)
	}
	switch {
	case nc.Service != "":
		if nc.Service != c.Service {
			return spiffeid.ID{}, fmt.Errorf("%w: service identity of %s/%s", identity.ErrMismatch, nc.Namespace, nc.Service)
		}
	case nc.Task != "" && nc.AllocID != "":
		if err := n.allocationDeclares(ctx, nc, c.Service); err != nil {
			return spiffeid.ID{}, err
		}
	default:
		return spiffeid.ID{}, fmt.Errorf("%w: the workload identity names neither a service nor a task", identity.ErrUnproven)
	}
	return identity.ServiceID(n.td, c.Namespace, c.Service)
}

// allocationDeclares checks, in Nomad, that a task identity's allocation
// runs and declares service.
func (n *Nomad) allocationDeclares(ctx context.Context, nc nomadClaims, service string) error {
	if n.api == nil {
		return fmt.Errorf("%w: a task identity is checked against Nomad's API, and none is configured", identity.ErrUnproven)
	}
	alloc, _, err := n.api.Allocations().Info(nc.AllocID, (&api.QueryOptions{Namespace: nc.Namespace}).WithContext(ctx))
	var ue api.UnexpectedResponseError
	switch {
	case errors.As(err, &ue) && ue.StatusCode() == http.StatusNotFound:
		return fmt.Errorf("%w: allocation %s does not exist", identity.ErrUnproven, nc.AllocID)
	case err != nil:
		return fmt.Errorf("attest: nomad: read allocation %s: %w", nc.AllocID, err)
	}
	if alloc.Namespace != nc.Namespace || alloc.JobID != nc.JobID || alloc.Job == nil {
		return fmt.Errorf("%w: allocation %s is not of job %s/%s", identity.ErrUnproven, nc.AllocID, nc.Namespace, nc.JobID)
	}
	if alloc.DesiredStatus != api.AllocDesiredStatusRun || alloc.ClientTerminalStatus() {
		return fmt.Errorf("%w: allocation %s no longer runs (%s, %s)", identity.ErrUnproven, nc.AllocID, alloc.DesiredStatus, alloc.ClientStatus)
	}
	group := alloc.Job.LookupTaskGroup(alloc.TaskGroup)
	if group == nil {
		return fmt.Errorf("%w: allocation %s has no group %s", identity.ErrUnproven, nc.AllocID, alloc.TaskGroup)
	}
	names := []string{}
	for _, s := range group.Services {
		names = append(names, s.Name)
	}
	for _, t := range group.Tasks {
		for _, s := range t.Services {
			names = append(names, s.Name)
		}
	}
	if !slices.Contains(names, service) {
		return fmt.Errorf("%w: allocation %s of job %s/%s declares no service %s (it declares %v)", identity.ErrMismatch, nc.AllocID, nc.Namespace, nc.JobID, service, names)
	}
	return nil
}
