package kubetest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// APIAudience is the API server's own audience: the audience of tokens
// issued without one, and the one a review without audiences checks.
const APIAudience = "https://kubernetes.default.svc.cluster.local"

// Tokens plays the API server's token authenticator on a fake clientset:
// it issues service account tokens and answers TokenReviews
// (authentication.k8s.io/v1) for them as the API server does. Its methods
// are safe for concurrent use.
type Tokens struct {
	mu      sync.Mutex
	issued  map[string]*issued
	reviews int
}

type issued struct {
	namespace, serviceAccount string
	audiences                 []string
	revoked                   bool
}

// ServeTokenReviews makes the clientset answer TokenReviews (create) for
// the tokens the returned Tokens issues; other tokens are not
// authenticated.
func ServeTokenReviews(c *fake.Clientset) *Tokens {
	t := &Tokens{issued: map[string]*issued{}}
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := a.(k8stesting.CreateAction)
		if !ok {
			return false, nil, nil
		}
		in, ok := ca.GetObject().(*authv1.TokenReview)
		if !ok {
			return false, nil, nil
		}
		out := in.DeepCopy()
		out.Status = t.review(in.Spec)
		return true, out, nil
	})
	return t
}

// review authenticates a token as the API server does: an issued, unrevoked
// token whose audiences meet the review's (the API server's own when the
// review names none).
func (t *Tokens) review(spec authv1.TokenReviewSpec) authv1.TokenReviewStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.reviews++
	tok, ok := t.issued[spec.Token]
	if !ok || tok.revoked {
		return authv1.TokenReviewStatus{Error: "invalid bearer token"}
	}
	want := spec.Audiences
	if len(want) == 0 {
		want = []string{APIAudience}
	}
	var common []string
	for _, a := range want {
		if slices.Contains(tok.audiences, a) {
			common = append(common, a)
		}
	}
	if len(common) == 0 {
		return authv1.TokenReviewStatus{Error: fmt.Sprintf("invalid bearer token: audiences %v are not among %v", tok.audiences, want)}
	}
	return authv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     common,
		User: authv1.UserInfo{
			Username: "system:serviceaccount:" + tok.namespace + ":" + tok.serviceAccount,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + tok.namespace, "system:authenticated"},
		},
	}
}

// Issue returns a new token of a service account, for audiences (the API
// server's own when none), shaped like a projected service account token:
// a JWT whose claims carry "kubernetes.io". Only the reviews know it is
// valid; its signature is random.
func (t *Tokens) Issue(namespace, serviceAccount string, audiences ...string) string {
	if len(audiences) == 0 {
		audiences = []string{APIAudience}
	}
	now := time.Now()
	claims := map[string]any{
		"aud": audiences,
		"exp": now.Add(time.Hour).Unix(),
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"iss": APIAudience,
		"sub": "system:serviceaccount:" + namespace + ":" + serviceAccount,
		"kubernetes.io": map[string]any{
			"namespace":      namespace,
			"serviceaccount": map[string]any{"name": serviceAccount, "uid": randomHex(16)},
		},
	}
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "kubetest"})
	payload, _ := json.Marshal(claims)
	sig := make([]byte, 256)
	_, _ = rand.Read(sig)
	enc := base64.RawURLEncoding
	token := enc.EncodeToString(header) + "." + enc.EncodeToString(payload) + "." + enc.EncodeToString(sig)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.issued[token] = &issued{namespace: namespace, serviceAccount: serviceAccount, audiences: slices.Clone(audiences)}
	return token
}

// Revoke makes a token invalid (its service account or pod was deleted).
func (t *Tokens) Revoke(token string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tok, ok := t.issued[token]; ok {
		tok.revoked = true
	}
}

// Reviews returns how many TokenReviews were answered.
func (t *Tokens) Reviews() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reviews
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}
