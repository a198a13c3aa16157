package attest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"

	"github.com/bowlinemesh/bowline/identity"
)

// KubernetesConfig configures the Kubernetes service account attestor.
type KubernetesConfig struct {
	TrustDomain spiffeid.TrustDomain
	// Client reaches the API server; Bowline's own service account needs
	// `create` on tokenreviews (authentication.k8s.io), which the
	// system:auth-delegator cluster role grants.
	Client k8s.Interface
	// Audiences, when set, are asked of the API server: a token must be
	// meant for one of them (a projected token with, say, audience
	// "bowline"). Empty means the API server's own audiences.
	Audiences []string
	// ServiceIdentities, when set, returns the SPIFFE IDs of a service's
	// endpoints as the catalog has them; see Kubernetes.
	ServiceIdentities func(namespace, service string) []string
}

// Kubernetes attests with Kubernetes service account tokens, which the API
// server checks (a TokenReview): an authenticated
// system:serviceaccount:NS:SA proves spiffe://<trust-domain>/ns/NS/sa/SA,
// the identity the Kubernetes adapter gives the pods that run as SA. The
// certificate names the service account, never the claimed service, so the
// claim's namespace must be NS (else a mismatch), and, when the catalog
// knows the claimed service's endpoints in that namespace with service
// account identities, the token's must be one of them (else a mismatch: the
// registry says the service runs as another account). A service the catalog
// does not know (yet) does not stop the claim: what is certified is what
// the API server proved.
type Kubernetes struct {
	td         spiffeid.TrustDomain
	client     k8s.Interface
	audiences  []string
	identities func(namespace, service string) []string
}

var _ identity.Attestor = (*Kubernetes)(nil)

// NewKubernetes returns the attestor.
func NewKubernetes(cfg KubernetesConfig) (*Kubernetes, error) {
	if cfg.Client == nil {
		return nil, errors.New("attest: kubernetes: a client is required")
	}
	return &Kubernetes{td: cfg.TrustDomain, client: cfg.Client, audiences: slices.Clone(cfg.Audiences), identities: cfg.ServiceIdentities}, nil
}

// Name implements identity.Attestor.
func (k *Kubernetes) Name() string { return "kubernetes" }

const saPrefix = "system:serviceaccount:"

// Attest implements identity.Attestor.
func (k *Kubernetes) Attest(ctx context.Context, c identity.Claim) (spiffeid.ID, error) {
	if c.Token == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: no token presented", identity.ErrUnproven)
	}
	var claims map[string]any
	if _, err := parseJWT(c.Token, &claims); err != nil {
		return spiffeid.ID{}, err
	}
	if !kubernetesToken(claims) {
		// Not sent to the API server: it may be another platform's secret.
		return spiffeid.ID{}, fmt.Errorf("%w: not a Kubernetes service account token", identity.ErrUnproven)
	}
	review, err := k.client.AuthenticationV1().TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: c.Token, Audiences: k.audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("attest: kubernetes: token review: %w", err)
	}
	st := review.Status
	if !st.Authenticated {
		return spiffeid.ID{}, fmt.Errorf("%w: the API server does not accept the token (%s)", identity.ErrUnproven, st.Error)
	}
	if len(k.audiences) > 0 && !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(k.audiences, a) }) {
		return spiffeid.ID{}, fmt.Errorf("%w: the token is for audiences %v, not %v", identity.ErrUnproven, st.Audiences, k.audiences)
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(st.User.Username, saPrefix), ":")
	if !strings.HasPrefix(st.User.Username, saPrefix) || !ok || ns == "" || sa == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: %q is not a service account", identity.ErrUnproven, st.User.Username)
	}
	if ns != c.Namespace {
		return spiffeid.ID{}, fmt.Errorf("%w: service account %s/%s is of another namespace", identity.ErrMismatch, ns, sa)
	}
	id, err := identity.ServiceAccountID(k.td, ns, sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %v", identity.ErrUnproven, err)
	}
	if k.identities != nil {
		prefix := "spiffe://" + k.td.Name() + "/ns/" + ns + "/sa/"
		var accounts []string
		for _, s := range k.identities(c.Namespace, c.Service) {
			if strings.HasPrefix(s, prefix) && !slices.Contains(accounts, s) {
				accounts = append(accounts, s)
			}
		}
		if len(accounts) > 0 && !slices.Contains(accounts, id.String()) {
			return spiffeid.ID{}, fmt.Errorf("%w: service %s/%s runs as %v, not as service account %s", identity.ErrMismatch, c.Namespace, c.Service, accounts, sa)
		}
	}
	return id, nil
}

// kubernetesToken tells a service account token by its claims: projected
// tokens carry "kubernetes.io", legacy secret-based ones
// "kubernetes.io/serviceaccount/…" claims and their own issuer.
func kubernetesToken(claims map[string]any) bool {
	if claims["iss"] == "kubernetes/serviceaccount" {
		return true
	}
	for k := range claims {
		if k == "kubernetes.io" || strings.HasPrefix(k, "kubernetes.io/") {
			return true
		}
	}
	return false
}
