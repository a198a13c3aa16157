package telemetry

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/bowlinemesh/bowline/policy/telemetry/ui"
)

// The HTTP endpoints, mounted on policyd's HTTP port (Handle):
//
//	GET /             the dashboard (package ui)
//	GET /ui/...       its script and style sheet
//	GET /v1/graph     the service graph over ?window= (default 5m)
//	GET /v1/signals   golden signals per service over ?window= (default
//	                  5m), recent audit records and the state of the metrics
//
// Errors are JSON objects {"error": "..."}, as policyd's other endpoints.

// Default windows of the endpoints.
const (
	DefaultGraphWindow   = 5 * time.Minute
	DefaultSignalsWindow = 5 * time.Minute
	recentDenials        = 20
)

// Mux is what Handle registers on (*http.ServeMux implements it).
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// Handle registers the endpoints.
func (s *Service) Handle(mux Mux) {
	mux.Handle("GET /{$}", ui.Handler())
	mux.Handle("GET /ui/", ui.Handler())
	mux.Handle("GET /v1/graph", jsonHandler(s.graphJSON))
	mux.Handle("GET /v1/signals", jsonHandler(s.signalsJSON))
}

type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func jsonHandler(h func(*http.Request) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := h(r)
		code := http.StatusOK
		if err != nil {
			code = http.StatusInternalServerError
			if ae, ok := err.(*apiError); ok {
				code = ae.code
			}
			v = map[string]string{"error": err.Error()}
		}
		b, _ := json.MarshalIndent(v, "", "  ")
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_, _ = w.Write(append(b, '\n'))
	})
}

func windowParam(r *http.Request, def time.Duration) (time.Duration, error) {
	s := r.URL.Query().Get("window")
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < SlotWidth || d > MaxWindow {
		return 0, &apiError{http.StatusBadRequest, fmt.Sprintf("window %q: want a duration from %s to %s, such as 5m", s, SlotWidth, MaxWindow)}
	}
	return d, nil
}

func (s *Service) graphJSON(r *http.Request) (any, error) {
	w, err := windowParam(r, DefaultGraphWindow)
	if err != nil {
		return nil, err
	}
	return s.graph.View(w), nil
}

// SignalsView is GET /v1/signals.
type SignalsView struct {
	Time          time.Time        `json:"time"`
	WindowSeconds float64          `json:"window_seconds"`
	SlotSeconds   float64          `json:"slot_seconds"`
	Services      []ServiceSignals `json:"services"`
	// Denials are the most recent audit records, newest first.
	Denials   []AuditRecord `json:"denials"`
	Telemetry TelemetryView `json:"telemetry"`
}

// TelemetryView is the state of the ingestion and of the metrics.
type TelemetryView struct {
	Entries    uint64 `json:"entries"`
	Streams    int64  `json:"streams"`
	Series     int    `json:"series"`
	MaxSeries  int    `json:"max_series"`
	Overflowed uint64 `json:"overflowed"`
}

func (s *Service) signalsJSON(r *http.Request) (any, error) {
	w, err := windowParam(r, DefaultSignalsWindow)
	if err != nil {
		return nil, err
	}
	_, _, secs := s.graph.window(w)
	return SignalsView{
		Time:          time.Now().UTC(),
		WindowSeconds: secs,
		SlotSeconds:   SlotWidth.Seconds(),
		Services:      s.graph.Signals(w),
		Denials:       s.audit.Recent(recentDenials),
		Telemetry: TelemetryView{
			Entries:    s.entries[kindHTTP].Load() + s.entries[kindTCP].Load(),
			Streams:    s.streamsOpen.Load(),
			Series:     s.metrics.Series(),
			MaxSeries:  int(s.metrics.max.Load()),
			Overflowed: s.metrics.Overflowed(),
		},
	}, nil
}
