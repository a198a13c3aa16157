package nomadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

// freeForm are the objects whose keys are data (meta, task names), not
// fields.
var freeForm = map[string]bool{
	"Meta": true, "Details": true, "Attributes": true, "Links": true, "TaskStates": true, "Tasks": true,
	"TaskResources": true, "TaskLifecycles": true, "NodesAvailable": true, "Scores": true, "CanaryMeta": true,
}

// sameShape reports the differences in structure (keys, kinds) between a
// response of the double and a captured one. Nulls match anything.
func sameShape(path string, got, want any) []string {
	if got == nil || want == nil {
		return nil
	}
	var diffs []string
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: got %T, want an object", path, got)}
		}
		if freeForm[path[strings.LastIndexByte(path, '.')+1:]] {
			for k, v := range g {
				for _, wv := range w {
					diffs = append(diffs, sameShape(path+"."+k, v, wv)...)
					break
				}
			}
			return diffs
		}
		for k := range w {
			if _, ok := g[k]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s.%s: missing", path, k))
			}
		}
		for k, v := range g {
			wv, ok := w[k]
			if !ok {
				diffs = append(diffs, fmt.Sprintf("%s.%s: not in the captured response", path, k))
				continue
			}
			diffs = append(diffs, sameShape(path+"."+k, v, wv)...)
		}
	case []any:
		g, ok := got.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: got %T, want an array", path, got)}
		}
		if len(g) > 0 && len(w) > 0 {
			for i := range g {
				diffs = append(diffs, sameShape(fmt.Sprintf("%s[%d]", path, i), g[i], w[0])...)
			}
		}
	default:
		if reflect.TypeOf(got) != reflect.TypeOf(want) {
			diffs = append(diffs, fmt.Sprintf("%s: got %T, want %T", path, got, want))
		}
	}
	return diffs
}

func fixtureJSON(t *testing.T, name string) any {
	t.Helper()
	b, err := Fixture(name)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func get(t *testing.T, url string) (http.Header, any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, body)
	}
	return resp.Header, v
}

var apiJob = Job{
	ID: "api", Meta: map[string]string{"team": "payments"},
	Services: []Service{
		{Name: "api", PortLabel: "http", Tags: []string{"v2", "mesh"}, Meta: map[string]string{"version": "v2", "protocol": "http"}},
		{Name: "api-grpc", PortLabel: "grpc", Meta: map[string]string{"protocol": "grpc"}},
	},
}

var webJob = Job{ID: "web", Services: []Service{{Name: "web", PortLabel: "http", Tags: []string{"v1"}}}}

func TestNomadDoubleAnswersLikeTheCapturedAgent(t *testing.T) {
	s := Start(t, Options{})
	s.SubmitJob(webJob)
	s.SubmitJob(apiJob)
	s.StartAlloc("default", "web", map[string]int{"http": 24433})
	s.StartAlloc("default", "web", map[string]int{"http": 23083})
	apiAlloc := s.StartAlloc("default", "api", map[string]int{"http": 30530, "grpc": 29869})

	h, got := get(t, s.URL()+"/v1/services")
	for _, d := range sameShape("services", got, fixtureJSON(t, "services-multi.json")) {
		t.Error(d)
	}
	if h.Get("X-Nomad-Index") == "" || h.Get("X-Nomad-Knownleader") != "true" || h.Get("X-Nomad-Lastcontact") != "0" {
		t.Errorf("headers %v lack Nomad's", h)
	}
	var stubs []struct {
		Namespace string
		Services  []struct {
			ServiceName string
			Tags        []string
		}
	}
	remarshal(t, got, &stubs)
	if len(stubs) != 1 || len(stubs[0].Services) != 3 {
		t.Fatalf("services: %+v", stubs)
	}

	_, got = get(t, s.URL()+"/v1/service/web")
	for _, d := range sameShape("service", got, fixtureJSON(t, "service-web.json")) {
		t.Error(d)
	}
	if n := len(got.([]any)); n != 2 {
		t.Errorf("web has %d registrations, want 2", n)
	}

	_, got = get(t, s.URL()+"/v1/allocation/"+apiAlloc)
	for _, d := range sameShape("allocation", got, fixtureJSON(t, "allocation-api.json")) {
		t.Error(d)
	}
	tg := got.(map[string]any)["Job"].(map[string]any)["TaskGroups"].([]any)[0].(map[string]any)
	svcs := tg["Services"].([]any)
	if len(svcs) != 2 || svcs[0].(map[string]any)["Meta"].(map[string]any)["version"] != "v2" {
		t.Errorf("the allocation's job lacks the service meta: %v", svcs)
	}

	resp, err := http.Get(s.URL() + "/v1/allocation/nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown allocation: %s, want 404", resp.Status)
	}
}

func remarshal(t *testing.T, from, to any) {
	t.Helper()
	b, err := json.Marshal(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, to); err != nil {
		t.Fatal(err)
	}
}

// readLines reads an event stream's lines in the background.
func readLines(t *testing.T, url string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines
}

func next(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("the stream ended")
		}
		return l
	case <-time.After(5 * time.Second):
		t.Fatal("no line within 5s")
	}
	return ""
}

func TestNomadDoubleEventStream(t *testing.T) {
	s := Start(t, Options{HeartbeatInterval: 50 * time.Millisecond})
	s.SubmitJob(webJob)
	start := s.Index()
	alloc := s.StartAlloc("default", "web", map[string]int{"http": 24433})

	// Replay from an index, then live events and heartbeats.
	lines := readLines(t, fmt.Sprintf("%s/v1/event/stream?topic=Service&index=%d", s.URL(), start+1))
	if l := next(t, lines); l != "{}" {
		t.Fatalf("first line %q, want a heartbeat", l)
	}
	var f struct {
		Index  uint64
		Events []map[string]any
	}
	l := next(t, lines)
	if err := json.Unmarshal([]byte(l), &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Events) != 1 || f.Events[0]["Type"] != "ServiceRegistration" {
		t.Fatalf("replayed frame %s", l)
	}
	var want struct{ Events []any }
	lifecycle, _ := Fixture("events-lifecycle.ndjson")
	for line := range strings.SplitSeq(string(lifecycle), "\n") {
		if strings.Contains(line, "ServiceDeregistration") {
			if err := json.Unmarshal([]byte(line), &want); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	var gotFrame any
	_ = json.Unmarshal([]byte(l), &gotFrame)
	wantFrame := map[string]any{"Events": want.Events, "Index": 1.0}
	for _, d := range sameShape("frame", gotFrame, wantFrame) {
		t.Error(d)
	}

	s.StopAlloc(alloc)
	for {
		l = next(t, lines)
		if l != "{}" {
			break
		}
	}
	if !strings.Contains(l, `"ServiceDeregistration"`) {
		t.Fatalf("want the deregistration, got %s", l)
	}
	// Heartbeats keep coming.
	if l = next(t, lines); l != "{}" {
		t.Fatalf("want a heartbeat, got %s", l)
	}

	// Dropping cuts the stream.
	if n := s.DropStreams(); n != 1 {
		t.Fatalf("dropped %d streams, want 1", n)
	}
	for range lines {
	}
}

func TestNomadDoubleBlockingQueries(t *testing.T) {
	s := Start(t, Options{})
	s.SubmitJob(webJob)
	h, _ := get(t, s.URL()+"/v1/services")
	index := h.Get("X-Nomad-Index")

	// No change: the query waits for its wait time, then answers with the
	// same index.
	start := time.Now()
	h, _ = get(t, s.URL()+"/v1/services?index="+index+"&wait=100ms")
	if h.Get("X-Nomad-Index") != index || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("a blocking query without change answered index %s after %s", h.Get("X-Nomad-Index"), time.Since(start))
	}

	// A change answers it at once, with the new index.
	done := make(chan http.Header)
	go func() {
		h, _ := get(t, s.URL()+"/v1/service/web?index="+index+"&wait=20s")
		done <- h
	}()
	time.Sleep(50 * time.Millisecond)
	s.StartAlloc("default", "web", map[string]int{"http": 21426})
	select {
	case h = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking query did not return after a change")
	}
	if h.Get("X-Nomad-Index") == index {
		t.Fatalf("index did not move: %s", index)
	}
}

func TestNomadDoubleDownAndUp(t *testing.T) {
	s := Start(t, Options{Token: "secret"})
	req, _ := http.NewRequest(http.MethodGet, s.URL()+"/v1/services", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("without a token: %s, want 403", resp.Status)
	}
	s.Down()
	if _, err := http.Get(s.URL() + "/v1/services"); err == nil {
		t.Fatal("a request to a down agent succeeded")
	}
	s.Up()
	req.Header.Set("X-Nomad-Token", "secret")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after Up: %s", resp.Status)
	}
	s.Restart(3)
	if got := s.Index(); got != 3 {
		t.Fatalf("index after a restart at 3: %d", got)
	}
	if n := s.Requests("/v1/services"); n != 2 {
		t.Fatalf("requests counted: %d, want 2", n)
	}
}
