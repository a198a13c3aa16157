// Package admin serves bowline server's HTTP admin API: the services of the
// catalog, the discovery sources and their health, the configuration in force
// with any rejected file and its diagnostics, the connected proxies with the
// versions they ACKed and their last NACK, each proxy's resources, health and
// readiness probes, and Prometheus metrics. Handlers return errors; one
// function turns them into JSON.
package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/server"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// Catalog is the part of discovery.Catalog the API reads.
type Catalog interface {
	Snapshot() *discovery.Snapshot
	Sources() []discovery.SourceStatus
}

// Configs is the part of config.Store the API reads.
type Configs interface {
	Current() *config.Config
	SourceErrors() map[string]string
}

// XDS is the part of the xDS server the API reads.
type XDS interface {
	Proxies() []server.ProxyStatus
	Proxy(id string) (server.ProxyStatus, bool)
	ProxyResources(id string) (*translate.Resources, bool)
	Ready() <-chan struct{}
}

var (
	_ Catalog = (*discovery.Catalog)(nil)
	_ Configs = (*config.Store)(nil)
	_ XDS     = (*server.Server)(nil)
)

// APIError is an error with an HTTP status; its message is shown to clients.
type APIError struct {
	Code    int    `json:"-"`
	Message string `json:"error"`
}

func (e *APIError) Error() string { return e.Message }

func notFound(format string, args ...any) error {
	return &APIError{Code: http.StatusNotFound, Message: fmt.Sprintf(format, args...)}
}

// API is the admin HTTP handler.
type API struct {
	log     *slog.Logger
	catalog Catalog
	configs Configs
	xds     XDS
	mux     *http.ServeMux
}

// New builds the API. gatherer serves /metrics (it should include the
// collectors that reg received: New registers catalog gauges on reg).
func New(log *slog.Logger, catalog Catalog, configs Configs, xds XDS, reg prometheus.Registerer, gatherer prometheus.Gatherer) *API {
	a := &API{log: log, catalog: catalog, configs: configs, xds: xds, mux: http.NewServeMux()}
	if reg != nil {
		reg.MustRegister(&catalogCollector{catalog: catalog, configs: configs})
	}
	a.handle("GET /v1/services", a.listServices)
	a.handle("GET /v1/services/{namespace}/{name}", a.getService)
	a.handle("GET /v1/sources", a.listSources)
	a.handle("GET /v1/proxies", a.listProxies)
	a.handle("GET /v1/proxies/{id}", a.getProxy)
	a.handle("GET /v1/proxies/{id}/config", a.getProxyConfig)
	a.handle("GET /v1/config", a.getConfig)
	a.handle("GET /healthz", func(w http.ResponseWriter, r *http.Request) error {
		return writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	a.handle("GET /readyz", a.readyz)
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	a.handle("/", func(w http.ResponseWriter, r *http.Request) error {
		return notFound("no such endpoint: %s %s", r.Method, r.URL.Path)
	})
	return a
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

type handlerFunc func(http.ResponseWriter, *http.Request) error

func (a *API) handle(pattern string, h handlerFunc) {
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		if err := h(w, r); err != nil {
			a.writeError(w, r, err)
		}
	})
}

// writeError turns any error into a JSON body; only APIError messages are
// shown to clients.
func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		a.log.Error("admin: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		apiErr = &APIError{Code: http.StatusInternalServerError, Message: "internal error"}
	}
	_ = writeJSON(w, apiErr.Code, apiErr)
}

func writeJSON(w http.ResponseWriter, code int, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("admin: encode response: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, err = w.Write(append(b, '\n'))
	return err
}

// ServiceSummary is one row of GET /v1/services.
type ServiceSummary struct {
	Namespace string             `json:"namespace"`
	Name      string             `json:"name"`
	Protocol  discovery.Protocol `json:"protocol"`
	Endpoints int                `json:"endpoints"`
	Healthy   int                `json:"healthy"`
	Sources   []string           `json:"sources"`
}

func (a *API) listServices(w http.ResponseWriter, r *http.Request) error {
	snap := a.catalog.Snapshot()
	out := []ServiceSummary{}
	for _, s := range snap.Services() {
		healthy := 0
		for _, e := range s.Endpoints {
			if e.Health == discovery.HealthHealthy {
				healthy++
			}
		}
		out = append(out, ServiceSummary{Namespace: s.Namespace, Name: s.Name, Protocol: s.Protocol,
			Endpoints: len(s.Endpoints), Healthy: healthy, Sources: s.Sources})
	}
	version := ""
	if snap != nil {
		version = snap.Version
	}
	return writeJSON(w, http.StatusOK, map[string]any{"version": version, "services": out})
}

func (a *API) getService(w http.ResponseWriter, r *http.Request) error {
	k := discovery.ServiceKey{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}
	svc, ok := a.catalog.Snapshot().Service(k)
	if !ok {
		return notFound("service %s not found", k)
	}
	return writeJSON(w, http.StatusOK, svc)
}

func (a *API) listSources(w http.ResponseWriter, r *http.Request) error {
	type configSource struct {
		Name  string `json:"name"`
		Error string `json:"error"`
	}
	cfgErrs := []configSource{}
	for name, e := range a.configs.SourceErrors() {
		cfgErrs = append(cfgErrs, configSource{Name: name, Error: e})
	}
	return writeJSON(w, http.StatusOK, map[string]any{"discovery": a.catalog.Sources(), "config_errors": cfgErrs})
}

func (a *API) listProxies(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, map[string]any{"proxies": a.xds.Proxies()})
}

func (a *API) getProxy(w http.ResponseWriter, r *http.Request) error {
	p, ok := a.xds.Proxy(r.PathValue("id"))
	if !ok {
		return notFound("proxy %q is not connected", r.PathValue("id"))
	}
	return writeJSON(w, http.StatusOK, p)
}

func (a *API) getProxyConfig(w http.ResponseWriter, r *http.Request) error {
	res, ok := a.xds.ProxyResources(r.PathValue("id"))
	if !ok {
		return notFound("proxy %q is not connected", r.PathValue("id"))
	}
	b, err := translate.JSON(res)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(b)
	return err
}

// ConfigFile is a file of GET /v1/config.
type ConfigFile struct {
	config.FileStatus
}

// RejectedFile is a rejected file of GET /v1/config.
type RejectedFile struct {
	Name        string              `json:"name"`
	Hash        string              `json:"hash"`
	At          time.Time           `json:"at"`
	Diagnostics []config.Diagnostic `json:"diagnostics"`
	Message     string              `json:"message"`
}

func (a *API) getConfig(w http.ResponseWriter, r *http.Request) error {
	cfg := a.configs.Current()
	if cfg == nil {
		return &APIError{Code: http.StatusServiceUnavailable, Message: "no configuration loaded yet"}
	}
	rejected := []RejectedFile{}
	for _, rej := range cfg.Status.Rejected {
		rejected = append(rejected, RejectedFile{Name: rej.Name, Hash: rej.Hash, At: rej.At, Diagnostics: rej.DiagnosticsJSON(), Message: rej.Text()})
	}
	files := cfg.Status.Files
	if files == nil {
		files = []config.FileStatus{}
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"version":      cfg.Version,
		"trust_domain": cfg.Mesh.TrustDomain,
		"files":        files,
		"rejected":     rejected,
	})
}

func (a *API) readyz(w http.ResponseWriter, r *http.Request) error {
	select {
	case <-a.xds.Ready():
		return writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	default:
		return &APIError{Code: http.StatusServiceUnavailable, Message: "not ready: the first snapshot is not built yet"}
	}
}

// catalogCollector exports the catalog's size and the sources' health.
type catalogCollector struct {
	catalog Catalog
	configs Configs
}

var (
	servicesDesc  = prometheus.NewDesc("bowline_catalog_services", "Services in the catalog.", nil, nil)
	endpointsDesc = prometheus.NewDesc("bowline_catalog_endpoints", "Endpoints in the catalog.", nil, nil)
	sourceDesc    = prometheus.NewDesc("bowline_discovery_source_healthy", "1 when a discovery source is healthy, 0 while it is degraded (its last state keeps serving).", []string{"source"}, nil)
	rejectedDesc  = prometheus.NewDesc("bowline_config_rejected_files", "Configuration files currently rejected.", nil, nil)
)

func (c *catalogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- servicesDesc
	ch <- endpointsDesc
	ch <- sourceDesc
	ch <- rejectedDesc
}

func (c *catalogCollector) Collect(ch chan<- prometheus.Metric) {
	snap := c.catalog.Snapshot()
	ch <- prometheus.MustNewConstMetric(servicesDesc, prometheus.GaugeValue, float64(snap.Len()))
	ch <- prometheus.MustNewConstMetric(endpointsDesc, prometheus.GaugeValue, float64(snap.Endpoints()))
	for _, s := range c.catalog.Sources() {
		v := 0.0
		if s.Healthy {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(sourceDesc, prometheus.GaugeValue, v, s.Name)
	}
	rejected := 0
	if cfg := c.configs.Current(); cfg != nil {
		rejected = len(cfg.Status.Rejected)
	}
	ch <- prometheus.MustNewConstMetric(rejectedDesc, prometheus.GaugeValue, float64(rejected))
}
