package nomadtest

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// subscriber is one open event stream.
type subscriber struct {
	topics map[string][]string // topic -> filter keys ("*" for all)
	ns     string
	frames chan []byte
	drop   chan struct{}
	once   sync.Once
}

func (sub *subscriber) cut() { sub.once.Do(func() { close(sub.drop) }) }

// bufferedFrame is one index's events, kept for replay.
type bufferedFrame struct {
	index  uint64
	events []streamEvent
}

// streamEvent is one event, with what subscribers filter on.
type streamEvent struct {
	topic      string
	namespace  string
	filterKeys []string
	key        string
	body       map[string]any
}

func (sub *subscriber) wants(e streamEvent) bool {
	if sub.ns != "*" && sub.ns != e.namespace {
		return false
	}
	keys, ok := sub.topics[e.topic]
	if !ok {
		keys, ok = sub.topics["*"]
	}
	if !ok {
		return false
	}
	for _, k := range keys {
		if k == "*" || k == e.key || slices.Contains(e.filterKeys, k) {
			return true
		}
	}
	return false
}

// encode renders the part of a frame the subscriber wants, or nil.
func (sub *subscriber) encode(f bufferedFrame) []byte {
	var events []map[string]any
	for _, e := range f.events {
		if sub.wants(e) {
			events = append(events, e.body)
		}
	}
	if len(events) == 0 {
		return nil
	}
	b, _ := json.Marshal(map[string]any{"Events": events, "Index": f.index})
	return append(b, '\n')
}

// publishLocked records a frame of events and sends it to the subscribers
// (s.mu held). A subscriber too slow to keep up is cut, as Nomad does.
func (s *Server) publishLocked(index uint64, events []streamEvent) {
	f := bufferedFrame{index: index, events: events}
	s.buffer = append(s.buffer, f)
	if len(s.buffer) > s.opts.EventBuffer {
		s.buffer = slices.Delete(s.buffer, 0, len(s.buffer)-s.opts.EventBuffer)
	}
	for id, sub := range s.subs {
		b := sub.encode(f)
		if b == nil {
			continue
		}
		select {
		case sub.frames <- b:
		default:
			sub.cut()
			delete(s.subs, id)
		}
	}
}

// eventStream is GET /v1/event/stream.
func (s *Server) eventStream(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var index uint64
	if v := q.Get("index"); v != "" {
		i, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "Unable to parse index: "+err.Error())
			return
		}
		index = i
	}
	sub := &subscriber{topics: map[string][]string{}, ns: namespaceParam(r), frames: make(chan []byte, 4096), drop: make(chan struct{})}
	topics := q["topic"]
	if len(topics) == 0 {
		topics = []string{"*"}
	}
	for _, t := range topics {
		topic, key, ok := strings.Cut(t, ":")
		if !ok {
			key = "*"
		}
		if strings.Contains(key, ":") {
			writeError(w, http.StatusBadRequest, "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: "+t)
			return
		}
		sub.topics[topic] = append(sub.topics[topic], key)
	}
	flusher, _ := w.(http.Flusher)

	s.mu.Lock()
	// Replay from the requested index, then follow: done under the lock, so
	// that no frame falls between.
	if index > 0 {
		for _, f := range s.buffer {
			if f.index >= index {
				if b := sub.encode(f); b != nil {
					sub.frames <- b
				}
			}
		}
	}
	id := s.nextSub
	s.nextSub++
	s.subs[id] = sub
	s.streams++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.mu.Unlock()
	}()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		s.mu.Lock()
		stalled := s.stalled
		s.mu.Unlock()
		if stalled {
			return true
		}
		if _, err := w.Write(b); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	heartbeat := []byte("{}\n")
	if !write(heartbeat) {
		return
	}
	tick := time.NewTicker(s.opts.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-sub.drop:
			panic(http.ErrAbortHandler) // cut the connection, no clean end
		case b := <-sub.frames:
			if !write(b) {
				return
			}
		case <-tick.C:
			if !write(heartbeat) {
				return
			}
		}
	}
}
