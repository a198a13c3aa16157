package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The dashboard in a real browser: Debian's chromium, headless, driven by
// chromedp. The browser is installed when missing (as root, with apt-get;
// .ci/run does the same beforehand).

var (
	chromiumOnce sync.Once
	chromiumPath string
	chromiumErr  error
)

func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// ensureChromium returns the browser, installing Debian's chromium when
// none is found.
func ensureChromium(t *testing.T) string {
	t.Helper()
	chromiumOnce.Do(func() {
		if chromiumPath = findChromium(); chromiumPath != "" {
			return
		}
		if os.Geteuid() != 0 {
			chromiumErr = fmt.Errorf("no chromium in PATH and not root: install it (apt-get install chromium)")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		install := func() ([]byte, error) {
			cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "chromium", "fonts-dejavu-core")
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			return cmd.CombinedOutput()
		}
		if out, err := install(); err != nil {
			if upd, err := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); err != nil {
				chromiumErr = fmt.Errorf("apt-get update: %v\n%s", err, upd)
				return
			}
			if out, err = install(); err != nil {
				chromiumErr = fmt.Errorf("apt-get install chromium: %v\n%s", err, out)
				return
			}
		}
		if chromiumPath = findChromium(); chromiumPath == "" {
			chromiumErr = fmt.Errorf("chromium installed but not found in PATH")
		}
	})
	if chromiumErr != nil {
		t.Skipf("no browser: %v", chromiumErr)
	}
	return chromiumPath
}

// browser starts a headless chromium with a fresh profile.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := ensureChromium(t)
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1366, 860),
	)
	// The whole browser's life: a bound for the test, not for one action.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(alloc, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(bctx); err != nil { // start the browser
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// pageState is what the dashboard shows, read from its DOM.
type pageState struct {
	Status  string   `json:"status"`
	Updates int      `json:"updates"`
	Nodes   []string `json:"nodes"`
	Edges   []struct {
		Source      string `json:"source"`
		Destination string `json:"destination"`
		Label       string `json:"label"`
		Aria        string `json:"aria"`
	} `json:"edges"`
	EdgeRows   []string `json:"edgeRows"`
	Signals    []string `json:"signals"`
	Denials    []string `json:"denials"`
	StatusText string   `json:"statusText"`
}

const readPage = `JSON.stringify({
  status: document.getElementById("status").dataset.state,
  statusText: document.getElementById("status").textContent,
  updates: Number(document.body.dataset.updates || 0),
  nodes: [...document.querySelectorAll("#nodes .node")].map(n => n.dataset.id),
  edges: [...document.querySelectorAll("#edges .edge")].map(e => ({
    source: e.dataset.source, destination: e.dataset.destination,
    label: [...document.querySelectorAll("#edge-labels .edge-label")].filter(l => l.dataset.source === e.dataset.source && l.dataset.destination === e.dataset.destination).map(l => l.textContent).join(" | "),
    aria: e.getAttribute("aria-label")})),
  edgeRows: [...document.querySelectorAll("#edges-table tbody tr")].map(r => r.textContent),
  signals: [...document.querySelectorAll("#signals-table tbody tr")].map(r => r.textContent),
  denials: [...document.querySelectorAll("#denials-table tbody tr")].map(r => r.textContent),
})`

func read(ctx context.Context) (pageState, error) {
	var st pageState
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[string](readPage))
	if err != nil {
		return st, err
	}
	err = json.Unmarshal([]byte(raw), &st)
	return st, err
}

// waitPage polls the DOM until ok accepts it (bounded).
func waitPage(t *testing.T, ctx context.Context, what string, ok func(pageState) error) pageState {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		st, err := read(ctx)
		if err == nil {
			if err = ok(st); err == nil {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("dashboard: %s: %v\nlast state: %+v", what, err, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func showsChain(st pageState) error {
	for _, id := range []string{"default/frontend", "default/orders", "default/payments"} {
		if !slices.Contains(st.Nodes, id) {
			return fmt.Errorf("no node %s in %v", id, st.Nodes)
		}
	}
	want := map[string]string{
		// 100 requests over a 5-minute window, 5 of them 503.
		"default/frontend>default/orders": "5.0% err",
		// 52 gRPC requests, 10 of them UNAVAILABLE.
		"default/orders>default/payments": "19% err",
	}
	found := 0
	for _, e := range st.Edges {
		w, ok := want[e.Source+">"+e.Destination]
		if !ok {
			continue
		}
		if !strings.Contains(e.Label, "rps") || !strings.Contains(e.Label, w) || !strings.Contains(e.Label, "mTLS 100%") || !strings.Contains(e.Label, "p99") {
			return fmt.Errorf("edge %s>%s label %q (want %q)", e.Source, e.Destination, e.Label, w)
		}
		if !strings.Contains(e.Aria, "requests per second") {
			return fmt.Errorf("edge aria-label %q", e.Aria)
		}
		found++
	}
	if found != len(want) {
		return fmt.Errorf("edges %+v", st.Edges)
	}
	return nil
}

func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.ArtifactDir(), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}

// TestDashboard: after reports for frontend → orders → payments, the page
// shows those services and the edges between them with their numbers, the
// golden signals and the denials.
func TestDashboard(t *testing.T) {
	dir, mesh := telemetryMesh(t)
	p := startPolicyd(t, dir, "", "", filepath.Join(t.TempDir(), "audit.jsonl"))
	sendChain(t, p.dial(t), mesh, 100)

	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+p.HTTPAddr+"/")); err != nil {
		t.Fatal(err)
	}
	st := waitPage(t, ctx, "the service graph", func(st pageState) error {
		if st.Status != "live" {
			return fmt.Errorf("status %q", st.Status)
		}
		return showsChain(st)
	})
	for _, svc := range []string{"orders", "payments"} {
		if !slices.ContainsFunc(st.Signals, func(row string) bool { return strings.HasPrefix(row, svc) }) {
			t.Errorf("no golden signals for %s: %q", svc, st.Signals)
		}
	}
	if len(st.EdgeRows) != 3 {
		t.Errorf("connections table: %q", st.EdgeRows)
	}
	if !slices.ContainsFunc(st.Denials, func(row string) bool {
		return strings.Contains(row, "denied") && strings.Contains(row, "default/batch → default/payments") &&
			strings.Contains(row, "default/payments/1") && strings.Contains(row, "mesh.hcl:20")
	}) {
		t.Errorf("no denial with its rule in %q", st.Denials)
	}

	// Accessibility basics: every control and graph element is labelled.
	unlabeled, err := chromedp.Run(ctx, chromedp.Evaluate[int](`[...document.querySelectorAll("#nodes .node, #edges .edge, .spark")].filter(e => !e.getAttribute("aria-label")).length +
		[...document.querySelectorAll("select")].filter(s => !document.querySelector('label[for="' + s.id + '"]')).length`))
	if err != nil {
		t.Fatal(err)
	}
	if unlabeled != 0 {
		t.Errorf("%d elements without an accessible label", unlabeled)
	}
	screenshot(t, ctx, "dashboard.png")
}

// TestDashboardSurvivesRestart: the page says when policyd is gone, keeps
// polling, and shows the new numbers once policyd is back on its port.
func TestDashboardSurvivesRestart(t *testing.T) {
	dir, mesh := telemetryMesh(t)
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	p := startPolicyd(t, dir, "", "", audit)
	sendChain(t, p.dial(t), mesh, 100)

	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+p.HTTPAddr+"/")); err != nil {
		t.Fatal(err)
	}
	waitPage(t, ctx, "the graph before the restart", func(st pageState) error {
		if st.Status != "live" {
			return fmt.Errorf("status %q", st.Status)
		}
		return showsChain(st)
	})

	p.Stop()
	stale := waitPage(t, ctx, "the lost connection", func(st pageState) error {
		if st.Status != "stale" {
			return fmt.Errorf("status %q", st.Status)
		}
		return nil
	})
	if len(stale.Nodes) == 0 {
		t.Errorf("the page dropped what it showed while policyd was away")
	}
	screenshot(t, ctx, "dashboard-reconnecting.png")

	p2 := startPolicyd(t, dir, p.GRPCAddr, p.HTTPAddr, audit)
	before := stale.Updates
	sendChain(t, p2.dial(t), mesh, 100) // the sidecars open new streams, as Envoy does
	waitPage(t, ctx, "the graph after the restart", func(st pageState) error {
		if st.Status != "live" || st.Updates <= before {
			return fmt.Errorf("status %q, %d updates", st.Status, st.Updates)
		}
		return showsChain(st)
	})
	screenshot(t, ctx, "dashboard-after-restart.png")
}
