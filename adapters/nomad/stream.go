package nomad

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/nomad/api"
)

// errNoStream reports that Nomad does not offer the event stream to this
// client (the agent's event broker is off, or the token may not read it).
var errNoStream = errors.New("nomad: event stream not available")

// frame is one line of the event stream: the events of one index, or a
// heartbeat (`{}`).
type frame struct {
	Index  uint64
	Events []event
}

// event is one event of the Service or Allocation topic.
type event struct {
	Topic     string
	Type      string
	Key       string
	Namespace string
	Index     uint64
	Payload   struct {
		Service    *api.ServiceRegistration
		Allocation *allocEvent
	}
}

// allocEvent is the part of an Allocation event's payload the adapter reads.
type allocEvent struct {
	ID               string
	Namespace        string
	JobID            string
	AllocModifyIndex uint64
}

// stream is an open event stream. frames is closed when it ends; err then
// says why.
type stream struct {
	frames chan frame
	err    error
}

// openStream subscribes to the Service and Allocation topics from index on,
// in the background.
func (s *Source) openStream(ctx context.Context, index uint64) *stream {
	st := &stream{frames: make(chan frame, 64)}
	go func() {
		defer close(st.frames)
		st.err = s.readStream(ctx, index, st.frames)
	}()
	return st
}

// readStream reads the event stream into frames until it fails or ctx ends.
// A stream that is silent (no event, no heartbeat) for the heartbeat timeout
// is cut.
func (s *Source) readStream(ctx context.Context, index uint64, frames chan<- frame) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stalled atomic.Bool
	watchdog := time.AfterFunc(s.cfg.HeartbeatTimeout, func() { stalled.Store(true); cancel() })
	defer watchdog.Stop()

	endpoint := "/v1/event/stream?topic=Service&topic=Allocation&index=" + strconv.FormatUint(index, 10)
	q := &api.QueryOptions{Namespace: s.cfg.Namespace, Region: s.cfg.Region}
	body, err := s.client.Raw().Response(endpoint, q.WithContext(ctx))
	if err != nil {
		if stalled.Load() {
			return fmt.Errorf("nomad: event stream: no response within %s", s.cfg.HeartbeatTimeout)
		}
		switch statusCode(err) {
		case http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusNotImplemented:
			return fmt.Errorf("%w: %w", errNoStream, err)
		}
		return fmt.Errorf("nomad: event stream: %w", err)
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	for {
		watchdog.Reset(s.cfg.HeartbeatTimeout)
		var f frame
		err := dec.Decode(&f)
		watchdog.Stop()
		switch {
		case stalled.Load():
			return fmt.Errorf("nomad: event stream: no event or heartbeat within %s", s.cfg.HeartbeatTimeout)
		case errors.Is(err, io.EOF):
			return errors.New("nomad: event stream: closed by Nomad")
		case err != nil:
			return fmt.Errorf("nomad: event stream: %w", err)
		}
		select {
		case frames <- f:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
