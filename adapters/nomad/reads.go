package nomad

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/hashicorp/nomad/api"
	"golang.org/x/sync/errgroup"

	"github.com/bowlinemesh/bowline/discovery"
)

// requestTimeout bounds a request, so that a connection that silently died
// (no reset) is noticed: the wait plus Nomad's jitter plus slack.
func requestTimeout(index uint64, wait time.Duration) time.Duration {
	const slack = 30 * time.Second
	if index == 0 {
		return slack
	}
	return wait + wait/16 + slack
}

// listServices reads the service names of the watched namespaces (a blocking
// query unless index is 0) and returns them with the X-Nomad-Index.
func (s *Source) listServices(ctx context.Context, index uint64) ([]discovery.ServiceKey, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout(index, s.cfg.WaitTime))
	defer cancel()
	q := &api.QueryOptions{Namespace: s.cfg.Namespace, Region: s.cfg.Region, WaitIndex: index}
	if index > 0 {
		q.WaitTime = s.cfg.WaitTime
	}
	list, meta, err := s.client.Services().List(q.WithContext(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("nomad: list services: %w", err)
	}
	var out []discovery.ServiceKey
	for _, l := range list {
		if l == nil || !s.watches(cmp.Or(l.Namespace, discovery.DefaultNamespace)) {
			continue
		}
		for _, st := range l.Services {
			if st != nil && st.ServiceName != "" {
				out = append(out, discovery.ServiceKey{Namespace: cmp.Or(l.Namespace, discovery.DefaultNamespace), Name: st.ServiceName})
			}
		}
	}
	slices.SortFunc(out, discovery.ServiceKey.Compare)
	return slices.Compact(out), meta.LastIndex, nil
}

// readServices reads the registrations of every service, and the index at
// which each service was read.
func (s *Source) readServices(ctx context.Context, keys []discovery.ServiceKey) ([]registration, map[discovery.ServiceKey]uint64, error) {
	results := make([][]registration, len(keys))
	indexes := make([]uint64, len(keys))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.cfg.Concurrency)
	for i, k := range keys {
		g.Go(func() error {
			regs, index, err := s.readService(gctx, k)
			results[i], indexes[i] = regs, index
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	applied := make(map[discovery.ServiceKey]uint64, len(keys))
	var out []registration
	for i, k := range keys {
		applied[k] = indexes[i]
		out = append(out, results[i]...)
	}
	return out, applied, nil
}

// readService reads one service's registrations.
func (s *Source) readService(ctx context.Context, k discovery.ServiceKey) ([]registration, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout(0, 0))
	defer cancel()
	q := &api.QueryOptions{Namespace: k.Namespace, Region: s.cfg.Region}
	list, meta, err := s.client.Services().Get(k.Name, q.WithContext(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("nomad: read service %s: %w", k, err)
	}
	var out []registration
	for _, r := range list {
		reg, err := convertRegistration(r)
		if err != nil {
			s.log.Warn("ignoring a Nomad registration", "service", k, "err", err)
			continue
		}
		out = append(out, reg)
	}
	return out, meta.LastIndex, nil
}

// readAlloc reads one allocation. An allocation Nomad no longer has (or that
// the token may not read) gives an entry without information: its
// registrations have their tags only.
func (s *Source) readAlloc(ctx context.Context, id, ns string, regIndex uint64) (*allocEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout(0, 0))
	defer cancel()
	q := &api.QueryOptions{Namespace: ns, Region: s.cfg.Region}
	a, meta, err := s.client.Allocations().Info(id, q.WithContext(ctx))
	if code := statusCode(err); code == http.StatusNotFound || code == http.StatusForbidden {
		s.log.Debug("cannot read a Nomad allocation; its registrations keep their tags only", "alloc", id, "err", err)
		return &allocEntry{validAt: regIndex}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("nomad: read allocation %s: %w", id, err)
	}
	return &allocEntry{info: convertAlloc(a), validAt: max(regIndex, meta.LastIndex)}, nil
}

// readNode reads one node's zone.
func (s *Source) readNode(ctx context.Context, id string) (nodeInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout(0, 0))
	defer cancel()
	q := &api.QueryOptions{Region: s.cfg.Region}
	n, _, err := s.client.Nodes().Info(id, q.WithContext(ctx))
	if err != nil {
		return nodeInfo{}, fmt.Errorf("nomad: read node %s: %w", id, err)
	}
	return convertNode(n), nil
}

// statusCode returns the HTTP status of a Nomad API error, or 0.
func statusCode(err error) int {
	var ue api.UnexpectedResponseError
	if errors.As(err, &ue) && ue.HasStatusCode() {
		return ue.StatusCode()
	}
	return 0
}
