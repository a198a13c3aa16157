package consul

import (
	"context"
	"errors"
	"fmt"
	"github.com/bowlinemesh/bowline/adapters/retry"
	"net/http"
	"reflect"
	"time"

	"github.com/hashicorp/consul/api"
)

// watchCatalog follows the set of service names and keeps one watcher per
// name.
func (r *run) watchCatalog(ctx context.Context) {
	log := r.src.log
	bo := r.src.backoff()
	var index, seen uint64 // the index to send; the last one Consul returned
	var last time.Time
	failing := false
	for pace(ctx, &last) {
		// A blocking query can be cut short by a service watcher that lost
		// its connection; the gate is then closed and Consul is probed at
		// once without blocking.
		rctx, cancel := context.WithCancel(ctx)
		r.mu.Lock()
		r.interruptCatalog = cancel
		r.mu.Unlock()
		if !r.gate.isOpen() {
			index = 0
		}
		start, sent := time.Now(), index
		names, meta, err := r.src.listServices(rctx, index)
		interrupted := rctx.Err() != nil
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil && interrupted {
			continue
		}
		if err != nil {
			err = fmt.Errorf("consul: list services: %w", err)
			if !failing {
				log.Warn("consul unreachable; the catalog keeps the last known services", "err", err)
			} else {
				log.Debug("consul still unreachable", "err", err)
			}
			r.connLimitHint(err)
			failing = true
			r.gate.set(false)
			r.setDown(err)
			index = 0
			if !retry.Sleep(ctx, bo.Next()) {
				return
			}
			continue
		}
		if failing {
			log.Info("consul reachable again")
		}
		failing = false
		bo.Reset()
		if seen != 0 && meta.LastIndex < seen {
			// Consul's state was replaced (a snapshot restore, a new
			// cluster): the service watches block on indexes it will reach
			// only much later.
			log.Info("consul's index went backwards; re-reading every service", "from", seen, "to", meta.LastIndex)
			r.mu.Lock()
			r.interruptPolls(ctx, true)
			r.mu.Unlock()
		}
		seen = meta.LastIndex
		index = nextIndex(index, meta.LastIndex)
		if cutShort(sent, meta.LastIndex, start, r.src.catalogWait) {
			index = 0 // read again at once: the new index shows a restore
		}
		r.reconcile(ctx, names)
		r.gate.set(true)
		r.setDown(nil)
	}
}

// reconcile starts a watcher for each new service name and stops those of
// names that are gone.
func (r *run) reconcile(ctx context.Context, names map[string][]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name := range names {
		if name == consulService || r.watchers[name] != nil {
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		w := &watcher{name: name, cancel: cancel}
		r.watchers[name] = w
		r.wg.Go(func() { r.watchService(wctx, w) })
	}
	for name, w := range r.watchers {
		if _, ok := names[name]; !ok {
			w.cancel()
			delete(r.watchers, name)
			r.gen++
		}
	}
	r.listed = true
	r.poke()
	if shared := r.slots != nil && len(r.watchers) > cap(r.slots); shared != r.shared {
		r.shared = shared
		if shared {
			r.src.log.Warn("more Consul services than connections: services take turns, so changes may take up to "+sharedReadEvery.String()+" to arrive; raise limits.http_max_conns_per_client on Consul and MaxConns together to watch each service continuously",
				"services", len(r.watchers), "max_conns", r.src.cfg.MaxConns)
			r.interruptPolls(ctx, false)
		} else {
			r.src.log.Info("every Consul service has its own long poll again", "services", len(r.watchers))
		}
	}
}

// interruptPolls cuts every outstanding service poll short; with reset, the
// watches also forget their indexes. r.mu must be held.
func (r *run) interruptPolls(ctx context.Context, reset bool) {
	r.interruptAll()
	r.interrupt, r.interruptAll = context.WithCancel(ctx)
	if reset {
		r.epoch++
	}
}

// poll is how one service poll is to be made.
type poll struct {
	wait      time.Duration   // the longest the query may block
	interrupt context.Context // cuts the query short
	epoch     uint64          // a new epoch means: start over from index 0
}

// nextPoll returns how the next service poll is to be made.
func (r *run) nextPoll() poll {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := poll{wait: r.src.cfg.WaitTime, interrupt: r.interrupt, epoch: r.epoch}
	if r.shared {
		// With n services taking turns on c slots, each service is read
		// every n/c waits.
		n, c := len(r.watchers), cap(r.slots)
		wait := sharedReadEvery * time.Duration(c) / time.Duration(n)
		p.wait = min(max(wait, minSharedWait), r.src.cfg.WaitTime)
	}
	return p
}

// acquire takes a request slot (waiting in turn), reporting false once ctx
// ends; release gives it back.
func (r *run) acquire(ctx context.Context) bool {
	if r.slots == nil {
		return true
	}
	select {
	case r.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *run) release() {
	if r.slots != nil {
		<-r.slots
	}
}

// watchService follows the instances and checks of one service.
func (r *run) watchService(ctx context.Context, w *watcher) {
	defer w.cancel()
	bo := r.src.backoff()
	var index, epoch uint64
	var last time.Time
	failures := 0
	for pace(ctx, &last) {
		// While Consul is known to be down, only the catalog watch probes.
		if !r.gate.wait(ctx) || !r.acquire(ctx) {
			return
		}
		if !r.gate.isOpen() { // closed while waiting for a slot
			r.release()
			continue
		}
		p := r.nextPoll()
		if p.epoch != epoch {
			index, epoch = 0, p.epoch
		}
		start := time.Now()
		list, meta, err := r.src.serviceHealth(ctx, p.interrupt, w.name, index, p.wait)
		r.release()
		if ctx.Err() != nil {
			return
		}
		if err != nil && p.interrupt.Err() != nil {
			continue // cut short: ask again, in turn
		}
		if err != nil {
			var se api.StatusError
			if !errors.As(err, &se) || se.Code >= http.StatusInternalServerError {
				r.suspectDown() // no answer, or Consul cannot serve reads
			}
			failures++
			r.serviceFailed(w, fmt.Errorf("consul: watch service %s: %w", w.name, err), failures)
			index = 0
			if !retry.Sleep(ctx, bo.Next()) {
				return
			}
			continue
		}
		failures = 0
		bo.Reset()
		if index != 0 && meta.LastIndex == index {
			if cutShort(index, meta.LastIndex, start, p.wait) {
				index = 0
			}
			continue // no change
		}
		index = nextIndex(index, meta.LastIndex)
		ents, warns := convertEntries(w.name, list, r.src.conv)
		for _, msg := range warns {
			r.src.log.Warn("ignoring part of a Consul registration", "service", w.name, "problem", msg)
		}
		r.setResult(w, ents)
	}
}

// suspectDown stops the service watches and has the catalog watch check
// whether Consul is down, after a service watch found no Consul to answer
// (or one answering with a server error): the catalog watch's own long poll
// may live on (a shutting-down agent finishes open requests) while new
// requests fail.
func (r *run) suspectDown() {
	r.gate.set(false)
	r.mu.Lock()
	interrupt := r.interruptCatalog
	r.mu.Unlock()
	if interrupt != nil {
		interrupt()
	}
}

// setResult stores a watcher's newest result.
func (r *run) setResult(w *watcher, ents entries) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watchers[w.name] != w {
		return // stopped meanwhile
	}
	if w.answered && reflect.DeepEqual(w.result, ents) {
		return
	}
	w.answered, w.result = true, ents
	r.gen++
	r.poke()
}

// serviceFailed logs a failed service watch. The third failure in a row of a
// watcher that never read its service counts as its first answer, so that one
// unreadable service (an ACL that hides it) does not hold back the first
// state for ever. The last result is kept.
func (r *run) serviceFailed(w *watcher, err error, failures int) {
	r.connLimitHint(err)
	if failures == giveUpFailures {
		r.src.log.Warn("cannot watch a Consul service; keeping its last known instances", "service", w.name, "err", err)
	} else {
		r.src.log.Debug("watching a Consul service failed", "service", w.name, "err", err, "failures", failures)
	}
	if failures < giveUpFailures {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watchers[w.name] == w && !w.answered {
		w.answered = true
		r.poke()
	}
}

// connLimitHint explains, once per run, a refusal for too many connections.
func (r *run) connLimitHint(err error) {
	var se api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusTooManyRequests || r.connHintLogged.Swap(true) {
		return
	}
	r.mu.Lock()
	n := len(r.watchers)
	r.mu.Unlock()
	r.src.log.Error("consul refuses connections: its limits.http_max_conns_per_client is below the source's MaxConns plus other clients on this host; lower MaxConns or raise the limit",
		"services", n, "max_conns", r.src.cfg.MaxConns, "err", err)
}

// listServices reads the service names (a blocking query unless index is 0).
//
// A read without index (the first one, and the probes after a failure) is a
// consistent read: a Consul server that has just restarted answers default
// reads while it is still replaying its raft log, from a catalog that lacks
// the newest registrations (a third of them, say, with a lower index), and
// only a consistent read waits until the leader has applied the whole log.
// The service watches read after this one succeeds (the gate), so they see
// the whole catalog too.
func (s *Source) listServices(ctx context.Context, index uint64) (map[string][]string, *api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout(index, s.catalogWait))
	defer cancel()
	q := &api.QueryOptions{Datacenter: s.cfg.Datacenter, WaitIndex: index, WaitTime: s.catalogWait, RequireConsistent: index == 0}
	return s.client.Catalog().Services(q.WithContext(ctx))
}

// serviceHealth reads every instance of a service with its checks (a blocking
// query of at most wait unless index is 0); interrupt cuts it short.
func (s *Source) serviceHealth(ctx, interrupt context.Context, name string, index uint64, wait time.Duration) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout(index, wait))
	defer cancel()
	defer context.AfterFunc(interrupt, cancel)()
	q := &api.QueryOptions{Datacenter: s.cfg.Datacenter, WaitIndex: index, WaitTime: wait}
	return s.client.Health().Service(name, "", false, q.WithContext(ctx))
}

// cutShort reports whether a blocking query returned well before its wait
// ran out without a new index. Consul does that when a snapshot restore
// abandons its state store, returning the old store's index: only a read
// without an index shows the restored state and its lower index.
func cutShort(sent, got uint64, start time.Time, wait time.Duration) bool {
	return sent != 0 && got == sent && time.Since(start) < wait*9/10
}

// requestTimeout bounds a request, so that a connection that silently died
// (no reset) is noticed: the wait plus Consul's jitter plus slack.
func requestTimeout(index uint64, wait time.Duration) time.Duration {
	const slack = 30 * time.Second
	if index == 0 {
		return slack
	}
	return wait + wait/16 + slack
}

func (s *Source) backoff() *retry.Backoff {
	return &retry.Backoff{Min: s.cfg.MinBackoff, Max: s.cfg.MaxBackoff}
}

// pace waits until minQueryInterval has passed since *last, then records the
// time of the next request; it reports false once ctx ends.
func pace(ctx context.Context, last *time.Time) bool {
	if d := minQueryInterval - time.Since(*last); d > 0 && !retry.Sleep(ctx, d) {
		return false
	}
	*last = time.Now()
	return ctx.Err() == nil
}
