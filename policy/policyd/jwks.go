package policyd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/bowlinemesh/bowline/policy"
)

// keyFetcher fetches the key sets of jwks_uri blocks over HTTPS and keeps
// each for its cache duration (a failed fetch is retried at the next check,
// at most every few seconds, and the last good keys keep verifying).
type keyFetcher struct {
	client *http.Client
	mu     sync.Mutex
	sets   map[string]*fetchedKeys
}

type fetchedKeys struct {
	mu      sync.Mutex
	keys    *jose.JSONWebKeySet
	fetched time.Time
	tried   time.Time
	err     error
}

var _ policy.KeySource = (*keyFetcher)(nil)

func newKeyFetcher(client *http.Client) *keyFetcher {
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	return &keyFetcher{client: client, sets: map[string]*fetchedKeys{}}
}

// Keys implements policy.KeySource.
func (f *keyFetcher) Keys(uri string, cache time.Duration) (*jose.JSONWebKeySet, error) {
	f.mu.Lock()
	e, ok := f.sets[uri]
	if !ok {
		e = &fetchedKeys{}
		f.sets[uri] = e
	}
	f.mu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	if e.keys != nil && now.Sub(e.fetched) < cache {
		return e.keys, nil
	}
	if now.Sub(e.tried) < 2*time.Second && e.err != nil {
		if e.keys != nil {
			return e.keys, nil
		}
		return nil, e.err
	}
	e.tried = now
	keys, err := f.fetch(uri)
	if err != nil {
		e.err = err
		if e.keys != nil {
			return e.keys, nil // the last good keys keep verifying
		}
		return nil, err
	}
	e.keys, e.fetched, e.err = keys, now, nil
	return keys, nil
}

func (f *keyFetcher) fetch(uri string) (*jose.JSONWebKeySet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("policyd: fetch %s: %w", uri, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("policyd: fetch %s: %s", uri, resp.Status)
	}
	var ks jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ks); err != nil {
		return nil, fmt.Errorf("policyd: fetch %s: %w", uri, err)
	}
	return &ks, nil
}
