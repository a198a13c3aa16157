package attest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bowlinemesh/bowline/identity"
)

// ConsulConfig configures the Consul ACL attestor.
type ConsulConfig struct {
	TrustDomain spiffeid.TrustDomain
	// Address of Consul's HTTP API: "host:port" or "https://host:port".
	// Empty means CONSUL_HTTP_ADDR, else 127.0.0.1:8500. TLS settings come
	// from CONSUL_CACERT, CONSUL_CLIENT_CERT and the like.
	Address string
	// Datacenter to ask; empty means the agent's own.
	Datacenter string
	// HTTPClient, when set, carries the requests as is.
	HTTPClient *http.Client
}

// Consul attests with Consul ACL tokens. A token proves the service
// NAME of its namespace when Consul lets it register that service
// (service:write on NAME): a service identity for NAME in the token, or
// any policy or role that grants it. The token is read with its own
// rights (GET /v1/acl/token/self: an unknown or expired token is refused
// there); when it carries no service identity for NAME, Consul's own
// authorizer answers (POST /v1/internal/acl/authorize, the endpoint Consul's
// UI uses), so that policies, roles and templated policies count exactly as
// Consul counts them. The attestor needs no token of its own. With ACLs
// disabled in Consul, a token proves nothing and every claim is undecided.
type Consul struct {
	td         spiffeid.TrustDomain
	dc         string
	client     *api.Client
	http       *http.Client
	authorizer string // URL of the authorize endpoint
}

var _ identity.Attestor = (*Consul)(nil)

// NewConsul returns the attestor; it does not contact Consul.
func NewConsul(cfg ConsulConfig) (*Consul, error) {
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	if scheme, host, ok := strings.Cut(ac.Address, "://"); ok {
		ac.Scheme, ac.Address = scheme, host
	}
	if ac.Scheme != "http" && ac.Scheme != "https" {
		return nil, fmt.Errorf("attest: consul: address %q: use host:port or https://host:port", cfg.Address)
	}
	ac.Datacenter = cfg.Datacenter
	ac.Token, ac.TokenFile = "", "" // every request carries the workload's token
	hc := cfg.HTTPClient
	if hc == nil {
		var err error
		if hc, err = api.NewHttpClient(ac.Transport, ac.TLSConfig); err != nil {
			return nil, fmt.Errorf("attest: consul: http client: %w", err)
		}
	}
	ac.HttpClient = hc
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("attest: consul: client for %s: %w", ac.Address, err)
	}
	u := url.URL{Scheme: ac.Scheme, Host: ac.Address, Path: "/v1/internal/acl/authorize"}
	return &Consul{td: cfg.TrustDomain, dc: cfg.Datacenter, client: client, http: hc, authorizer: u.String()}, nil
}

// Name implements identity.Attestor.
func (c *Consul) Name() string { return "consul" }

// uuidRe is the shape of Consul's secret IDs.
var uuidRe = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// Attest implements identity.Attestor.
func (c *Consul) Attest(ctx context.Context, claim identity.Claim) (spiffeid.ID, error) {
	if claim.Token == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: no token presented", identity.ErrUnproven)
	}
	if !uuidRe.MatchString(claim.Token) {
		// Not sent to Consul: it may be another platform's secret.
		return spiffeid.ID{}, fmt.Errorf("%w: not a Consul ACL token", identity.ErrUnproven)
	}
	tok, _, err := c.client.ACL().TokenReadSelf((&api.QueryOptions{Token: claim.Token, Datacenter: c.dc}).WithContext(ctx))
	if err != nil {
		return spiffeid.ID{}, c.refusal("read the token", err)
	}
	ns := cmp.Or(tok.Namespace, "default")
	if ns != claim.Namespace {
		return spiffeid.ID{}, fmt.Errorf("%w: Consul token %s belongs to namespace %s", identity.ErrMismatch, tok.AccessorID, ns)
	}
	proven := false
	for _, si := range tok.ServiceIdentities {
		if si.ServiceName == claim.Service && len(si.Datacenters) == 0 {
			proven = true
		}
	}
	if !proven {
		if proven, err = c.authorize(ctx, claim.Token, tok.Namespace, claim.Service); err != nil {
			return spiffeid.ID{}, err
		}
	}
	if !proven {
		return spiffeid.ID{}, fmt.Errorf("%w: Consul token %s may not register service %s (service:write)", identity.ErrMismatch, tok.AccessorID, claim.Service)
	}
	return identity.ServiceID(c.td, claim.Namespace, claim.Service)
}

// authorize asks Consul whether token has service:write on service.
func (c *Consul) authorize(ctx context.Context, token, namespace, service string) (bool, error) {
	type check struct {
		Resource, Segment, Access string
		Allow                     bool `json:",omitempty"`
	}
	body, err := json.Marshal([]check{{Resource: "service", Segment: service, Access: "write"}})
	if err != nil {
		return false, fmt.Errorf("attest: consul: %w", err)
	}
	u := c.authorizer
	q := url.Values{}
	if c.dc != "" {
		q.Set("dc", c.dc)
	}
	if namespace != "" {
		q.Set("ns", namespace)
	}
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("attest: consul: %w", err)
	}
	req.Header.Set("X-Consul-Token", token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return false, fmt.Errorf("attest: consul: authorize: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return false, fmt.Errorf("attest: consul: authorize: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return false, c.refusal("authorize", api.StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(b))})
	}
	var out []check
	if err := json.Unmarshal(b, &out); err != nil {
		return false, fmt.Errorf("attest: consul: authorize: decode: %w", err)
	}
	if len(out) != 1 || out[0].Resource != "service" || out[0].Segment != service || out[0].Access != "write" {
		return false, fmt.Errorf("attest: consul: authorize: unexpected answer %s", b)
	}
	return out[0].Allow, nil
}

// refusal turns a Consul error into the attestor's: an unknown token is
// unproven; anything else (ACLs disabled, Consul unreachable) undecided.
func (c *Consul) refusal(what string, err error) error {
	var se api.StatusError
	if errors.As(err, &se) {
		switch {
		case se.Code == http.StatusForbidden:
			return fmt.Errorf("%w: Consul does not know the token (%s)", identity.ErrUnproven, se.Body)
		case se.Code == http.StatusUnauthorized:
			return fmt.Errorf("attest: consul: ACLs are disabled in Consul, so a Consul token proves nothing (%s)", se.Body)
		}
	}
	return fmt.Errorf("attest: consul: %s: %w", what, err)
}
