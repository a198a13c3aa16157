package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/bowlinemesh/bowline/adapters/retry"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/config"
)

// KVFilePrefix starts the name of every file a KVSource delivers: the file of
// key bowline/config/routes.hcl is "consul-kv:bowline/config/routes.hcl", so
// diagnostics say where a rule came from.
const KVFilePrefix = "consul-kv:"

// KVConfig configures a KVSource.
type KVConfig struct {
	// Address, Token and Datacenter are as in Config (empty Token: the
	// CONSUL_HTTP_TOKEN variable).
	Address    string
	Token      string
	Datacenter string
	// Prefix is the KV folder holding the configuration files, for example
	// "bowline/config/". A missing trailing slash is added, so that
	// "bowline/config" does not also read "bowline/config-old/".
	Prefix string
	// HTTPClient and WrapTransport are as in Config.
	HTTPClient    *http.Client
	WrapTransport func(http.RoundTripper) http.RoundTripper
	// WaitTime, MinBackoff and MaxBackoff are as in Config (defaults 5m,
	// 500ms and 30s).
	WaitTime, MinBackoff, MaxBackoff time.Duration
}

// KVSource is a config.FileSource reading HCL configuration files from Consul
// KV: every key under the prefix whose name ends in .hcl or .hcl.json (and
// does not start with a dot), at any depth, is a file. It follows the prefix
// with one blocking query (recurse, index, wait) and the same index rules and
// backoff as the discovery watches, and sends the complete set of files each
// time it changes. While Consul cannot be reached it sends a FileSet with Err
// once, so the store keeps the last files, and once Consul answers again it
// sends the complete set, even if nothing changed. Validation is the store's:
// a key whose content does not decode is rejected with diagnostics naming
// "consul-kv:<key>:<line>:<column>", and its last valid version keeps serving.
type KVSource struct {
	cfg    KVConfig
	log    *slog.Logger
	client *api.Client
}

var _ config.FileSource = (*KVSource)(nil)

// NewKV returns a KV source for cfg; log may be nil. It does not contact
// Consul.
func NewKV(cfg KVConfig, log *slog.Logger) (*KVSource, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Prefix = strings.TrimPrefix(strings.TrimSpace(cfg.Prefix), "/")
	if cfg.Prefix == "" {
		return nil, errors.New("consul: kv prefix must not be empty (it would read the whole KV store)")
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	cfg.Token = cmp.Or(cfg.Token, os.Getenv(api.HTTPTokenEnvName))
	cfg.WaitTime = cmp.Or(cfg.WaitTime, DefaultWaitTime)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff), cfg.MinBackoff)
	if cfg.WaitTime < 0 || cfg.MinBackoff < 0 {
		return nil, errors.New("consul: kv wait time and backoff must not be negative")
	}
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	ac.Token = cfg.Token
	ac.Datacenter = cfg.Datacenter
	ac.WaitTime = cfg.WaitTime
	switch {
	case cfg.HTTPClient != nil:
		ac.HttpClient = cfg.HTTPClient
	case cfg.WrapTransport != nil:
		hc, err := api.NewHttpClient(ac.Transport, ac.TLSConfig)
		if err != nil {
			return nil, fmt.Errorf("consul: http client: %w", err)
		}
		hc.Transport = cfg.WrapTransport(hc.Transport)
		ac.HttpClient = hc
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul: client for %s: %w", ac.Address, err)
	}
	return &KVSource{cfg: cfg, log: log.With("source", "consul-kv", "prefix", cfg.Prefix), client: client}, nil
}

// Name implements config.FileSource: "consul-kv:<prefix>".
func (k *KVSource) Name() string { return KVFilePrefix + k.cfg.Prefix }

// Run implements config.FileSource: it follows the prefix until ctx is
// cancelled and then returns nil. It never fails because Consul is down.
func (k *KVSource) Run(ctx context.Context, out chan<- config.FileSet) error {
	bo := &retry.Backoff{Min: k.cfg.MinBackoff, Max: k.cfg.MaxBackoff}
	var (
		index   uint64 // the index to send
		last    []config.File
		sent    bool // a set of files was sent
		failing bool // the last read failed (and an error was sent)
		lastReq time.Time
	)
	send := func(fs config.FileSet) bool {
		select {
		case out <- fs:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for pace(ctx, &lastReq) {
		start, asked := time.Now(), index
		pairs, meta, err := k.list(ctx, index)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			err = fmt.Errorf("consul: read kv %s: %w", k.cfg.Prefix, err)
			if !failing {
				k.log.Warn("consul kv unreachable; the configuration keeps its last files from it", "err", err)
				if !send(config.FileSet{Err: err}) {
					return nil
				}
			} else {
				k.log.Debug("consul kv still unreachable", "err", err)
			}
			failing, index = true, 0
			if !retry.Sleep(ctx, bo.Next()) {
				return nil
			}
			continue
		}
		bo.Reset()
		if asked != 0 && meta.LastIndex == asked {
			if cutShort(asked, meta.LastIndex, start, k.cfg.WaitTime) {
				index = 0 // a snapshot restore: read without index
			}
			continue // the wait ran out: nothing changed
		}
		index = nextIndex(index, meta.LastIndex)
		files := kvFiles(k.cfg.Prefix, pairs)
		if sent && !failing && sameFileSet(last, files) {
			continue
		}
		if failing {
			k.log.Info("consul kv reachable again", "files", len(files))
		}
		if !send(config.FileSet{Files: files}) {
			return nil
		}
		last, sent, failing = files, true, false
	}
	return nil
}

// list reads every pair under the prefix (a blocking query unless index is
// 0). A read without index is consistent, for the reason listServices gives:
// a restarted server would otherwise answer from a half-replayed store, and
// the files written last would seem deleted.
func (k *KVSource) list(ctx context.Context, index uint64) (api.KVPairs, *api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout(index, k.cfg.WaitTime))
	defer cancel()
	q := &api.QueryOptions{Datacenter: k.cfg.Datacenter, WaitIndex: index, WaitTime: k.cfg.WaitTime, RequireConsistent: index == 0}
	pairs, meta, err := k.client.KV().List(k.cfg.Prefix, q.WithContext(ctx))
	if err == nil && meta == nil {
		err = errors.New("no query metadata in the response")
	}
	return pairs, meta, err
}

// kvFiles turns the pairs under prefix into configuration files named
// "consul-kv:<key>", ordered by name: keys ending in .hcl or .hcl.json whose
// last segment does not start with a dot; folders and other keys are skipped.
func kvFiles(prefix string, pairs api.KVPairs) []config.File {
	var files []config.File
	for _, p := range pairs {
		if p == nil || !strings.HasPrefix(p.Key, prefix) || strings.HasSuffix(p.Key, "/") {
			continue
		}
		base := p.Key[strings.LastIndex(p.Key, "/")+1:]
		if !config.IsConfigFile(base) {
			continue
		}
		files = append(files, config.File{Name: KVFilePrefix + p.Key, Content: slices.Clone(p.Value)})
	}
	slices.SortFunc(files, func(a, b config.File) int { return strings.Compare(a.Name, b.Name) })
	return files
}

// sameFileSet reports whether two sorted file sets are equal.
func sameFileSet(a, b []config.File) bool {
	return slices.EqualFunc(a, b, func(x, y config.File) bool {
		return x.Name == y.Name && string(x.Content) == string(y.Content)
	})
}
