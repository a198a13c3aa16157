package consul

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/test/consulagent"
)

// replayEntries is how many raft log entries the restart tests write: enough
// that a restarted agent takes a few hundred milliseconds to replay them, and
// answers default reads from a partial store meanwhile.
const replayEntries = 300

// registerFiller registers replayEntries services r-000, r-001, … on an
// external node, one raft log entry each.
func registerFiller(t *testing.T, c *api.Client) {
	t.Helper()
	for i := range replayEntries {
		_, err := c.Catalog().Register(&api.CatalogRegistration{
			Node: "ext-node", Address: "10.4.0.1", Datacenter: consulagent.Datacenter,
			Service: &api.AgentService{ID: fmt.Sprintf("r-%03d", i), Service: fmt.Sprintf("r-%03d", i), Port: 7000 + i},
		}, nil)
		if err != nil {
			t.Fatalf("register %d: %v", i, err)
		}
	}
}

// TestSourceConsulRestartShowsNoPartialCatalog restarts a Consul server whose
// raft log holds hundreds of registrations, one entry each. While the
// restarted server replays its log it answers default reads from a catalog
// that lacks the newest ones (at a lower index); the source must not take
// that for the catalog and remove services. It probes often here, so that it
// reads during the replay.
func TestSourceConsulRestartShowsNoPartialCatalog(t *testing.T) {
	t.Parallel()
	agent := consulagent.Start(t)
	c := apiClient(t, agent)
	registerFiller(t, c)
	h := newHarness(t, agent.Address(), func(c *Config) {
		c.MinBackoff, c.MaxBackoff = 10*time.Millisecond, 40*time.Millisecond
	})
	h.waitSnapshot("every service", func(s *discovery.Snapshot) bool { return s.Len() == replayEntries })

	for round := range 2 {
		agent.Restart()
		h.waitStatus("source healthy", func(s discovery.SourceStatus) bool { return s.Healthy })
		// A change after the restart arrives, so the source has read the
		// restarted agent.
		port := 9000 + round
		_, err := c.Catalog().Register(&api.CatalogRegistration{
			Node: "ext-node", Address: "10.4.0.1", Datacenter: consulagent.Datacenter,
			Service: &api.AgentService{ID: "r-000", Service: "r-000", Port: port},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		h.waitSnapshot("a change after the restart", func(s *discovery.Snapshot) bool {
			_, ok := endpointsOf(s, "r-000")[uint32(port)]
			return ok
		})
	}
	for i, s := range h.snapshots() {
		if s.Len() != replayEntries {
			t.Errorf("snapshot %d has %d services, want %d throughout the restarts", i, s.Len(), replayEntries)
		}
	}
	for i, st := range h.rec.recorded() {
		if st.Err == nil && len(st.Services) != replayEntries {
			t.Errorf("state %d has %d services: the source took a replaying agent's catalog for the catalog", i, len(st.Services))
		}
	}
}

// TestConsulKVRestartShowsNoPartialPrefix is the same for the KV source: the
// files written last must not seem deleted while a restarted server replays
// its log.
func TestConsulKVRestartShowsNoPartialPrefix(t *testing.T) {
	t.Parallel()
	agent := consulagent.Start(t)
	c := apiClient(t, agent)
	// Entries before the files, so that the files come last in the log:
	// registrations, which take longer to replay than KV writes.
	registerFiller(t, c)
	want := map[string]string{}
	for i := range 3 {
		key := fmt.Sprintf("%sr-%d.hcl", kvPrefix, i)
		want[key] = fmt.Sprintf("subset \"r\" \"v%d\" {\n  labels = { version = \"v%d\" }\n}\n", i, i)
		kvPut(t, c, key, want[key])
	}

	src, err := NewKV(KVConfig{Address: agent.Address(), Prefix: kvPrefix, MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan config.FileSet, 64)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	var sets []config.FileSet
	next := func(what string) config.FileSet {
		t.Helper()
		select {
		case fs := <-out:
			sets = append(sets, fs)
			return fs
		case <-time.After(waitTimeout):
			t.Fatalf("timed out waiting for %s; sets so far: %s", what, describeSets(sets))
		}
		return config.FileSet{}
	}
	if fs := next("the first set"); !files(want)(fs) {
		t.Fatalf("first set: %s", describeSets([]config.FileSet{fs}))
	}
	for round := range 2 {
		agent.Restart()
		// The outage is reported, then the complete set comes back.
		for fs := next("the set after the restart"); fs.Err != nil; fs = next("the set after the restart") {
		}
		key := kvPrefix + "r-0.hcl"
		want[key] = fmt.Sprintf("# round %d\n", round)
		kvPut(t, c, key, want[key])
		for fs := next("the change after the restart"); !files(want)(fs); fs = next("the change after the restart") {
		}
	}
	for i, fs := range sets {
		if fs.Err == nil && len(fs.Files) != len(want) {
			t.Errorf("set %d has %d files (%s): the source took a replaying agent's store for the prefix", i, len(fs.Files), strings.Join(fileNames(fs), " "))
		}
	}
	if !slices.ContainsFunc(sets, func(fs config.FileSet) bool { return fs.Err != nil }) {
		t.Error("no error set was sent while the agent was down")
	}
}
