package server

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// testEntry is a resource whose bytes say its name and version, so that a
// simulated client can tell what a response carried.
func testEntry(typeURL, name, version string) *entry {
	return &entry{name: name, version: version, any: &anypb.Any{TypeUrl: typeURL, Value: []byte(name + "@" + version)}}
}

func decodeTestAny(t *testing.T, a *anypb.Any) (name, version string) {
	t.Helper()
	name, version, ok := strings.Cut(string(a.GetValue()), "@")
	if !ok {
		t.Fatalf("resource %q is not a test entry", a.GetValue())
	}
	return name, version
}

// randomSet is a type set over names n00..n19, each present with
// probability 3/4 at one of three versions; when base is given, the set is
// layered on it with a few names of its own (o0..o2).
func randomSet(r *rand.Rand, typeURL string, base *typeSet) *typeSet {
	var entries []*entry
	prefix, count := "n", 20
	if base != nil {
		prefix, count = "o", 3
	}
	for i := range count {
		if r.IntN(4) == 0 {
			continue
		}
		entries = append(entries, testEntry(typeURL, fmt.Sprintf("%s%02d", prefix, i), fmt.Sprint(r.IntN(3))))
	}
	ts := newTypeSet(entries)
	if base != nil {
		return layer(base, ts)
	}
	return ts
}

func randomSub(r *rand.Rand, in *interner, wildcardOK bool) subscription {
	if wildcardOK && r.IntN(3) == 0 {
		return subscription{wildcard: true}
	}
	names := map[string]struct{}{}
	for i := range 22 { // two names that never exist
		if r.IntN(2) == 0 {
			names[fmt.Sprintf("n%02d", i)] = struct{}{}
		}
	}
	for i := range 3 {
		if r.IntN(2) == 0 {
			names[fmt.Sprintf("o%d", i)] = struct{}{}
		}
	}
	return subscription{names: in.intern(names)}
}

// TestBodiesKeepClientsInSync drives a simulated client through random
// changes of its type set and subscription, with some responses rejected,
// applying each computed body as Envoy would, and checks after every
// accepted response that the client holds exactly what it subscribed to, at
// the current versions. Bodies are memoized, so the same sequences run
// twice on one memo to make the second pass use memoized bodies.
func TestBodiesKeepClientsInSync(t *testing.T) {
	modes := []struct {
		name    string
		delta   bool
		typeURL string
	}{
		{"sotw endpoints", false, resourcev3.EndpointType},
		{"sotw clusters", false, resourcev3.ClusterType},
		{"delta endpoints", true, resourcev3.EndpointType},
		{"delta clusters", true, resourcev3.ClusterType},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			in := newInterner()
			b := newBodies()
			for pass := range 2 {
				for seed := range 200 {
					runClient(t, b, in, m.delta, m.typeURL, uint64(seed), pass)
				}
			}
		})
	}
}

func runClient(t *testing.T, b *bodies, in *interner, delta bool, typeURL string, seed uint64, pass int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	full := !delta && (typeURL == resourcev3.ClusterType)
	wildcardOK := typeURL == resourcev3.ClusterType
	layered := r.IntN(2) == 0
	// Sets are drawn from a small pool so that the memo sees repeated keys.
	var pool []*typeSet
	for range 4 {
		base := randomSet(r, typeURL, nil)
		if layered {
			pool = append(pool, randomSet(r, typeURL, base), randomSet(r, typeURL, base))
		} else {
			pool = append(pool, base)
		}
	}
	// Subscriptions too, so that clients come back to earlier ones.
	subs := []subscription{randomSub(r, in, wildcardOK), randomSub(r, in, wildcardOK), randomSub(r, in, wildcardOK)}
	client := map[string]string{}
	var held *typeSet
	var heldSub subscription
	sub := subs[0]
	answered := false
	var initial map[string]string
	if delta && r.IntN(3) == 0 {
		// A reconnecting client that holds some resources already.
		initial = map[string]string{}
		for e := range slices.Values(covered(pool[0], sub)) {
			if r.IntN(2) == 0 {
				initial[e.name] = e.version
			}
		}
		if sub.covers("n21") {
			initial["n21"] = "0" // no longer exists
		}
		maps.Copy(client, initial)
	}
	for step := range 30 {
		cur := pool[r.IntN(len(pool))]
		if r.IntN(3) == 0 {
			// The client drops what it no longer subscribes to.
			sub = subs[r.IntN(len(subs))]
			heldSub = in.narrow(heldSub, sub)
			maps.DeleteFunc(initial, func(n string, _ string) bool { return !sub.covers(n) })
			maps.DeleteFunc(client, func(n string, _ string) bool { return !sub.covers(n) })
		}
		if answered && held == cur && heldSub == sub {
			continue
		}
		k := bodyKey{delta: delta, typeURL: typeURL, cur: cur, sub: sub}
		if full {
			k.full = true
		} else {
			k.held, k.heldSub = held, heldSub
			k.must = !answered && (!delta || sub.wildcard)
		}
		body, err := b.get(k, initial)
		if err != nil {
			t.Fatal(err)
		}
		answered = true
		where := fmt.Sprintf("seed %d pass %d step %d", seed, pass, step)
		if body == nil {
			held, heldSub, initial = cur, sub, nil
			checkClient(t, where+" (nothing sent)", client, cur, sub, full || delta)
			continue
		}
		next := maps.Clone(client)
		if delta {
			var resp discoverypb.DeltaDiscoveryResponse
			if err := proto.Unmarshal(bytes.Join(body, nil), &resp); err != nil {
				t.Fatal(err)
			}
			if resp.GetSystemVersionInfo() != cur.version {
				t.Fatalf("%s: version %q, want %q", where, resp.GetSystemVersionInfo(), cur.version)
			}
			for _, res := range resp.GetResources() {
				name, version := decodeTestAny(t, res.GetResource())
				if name != res.GetName() || version != res.GetVersion() {
					t.Fatalf("%s: resource %s@%s sent as %s@%s", where, name, version, res.GetName(), res.GetVersion())
				}
				next[name] = version
			}
			for _, name := range resp.GetRemovedResources() {
				delete(next, name)
			}
		} else {
			var resp discoverypb.DiscoveryResponse
			if err := proto.Unmarshal(bytes.Join(body, nil), &resp); err != nil {
				t.Fatal(err)
			}
			if full {
				clear(next)
			}
			for _, a := range resp.GetResources() {
				name, version := decodeTestAny(t, a)
				next[name] = version
			}
			if !full {
				// Names gone from the set are dropped with the clusters
				// or listeners that referred to them.
				maps.DeleteFunc(next, func(n string, _ string) bool { _, ok := cur.get(n); return !ok })
			}
		}
		if r.IntN(5) == 0 {
			continue // rejected: the client keeps what it held
		}
		client, held, heldSub, initial = next, cur, sub, nil
		checkClient(t, where, client, cur, sub, full || delta)
	}
}

// checkClient compares what a client holds with what it should: every
// subscribed resource of cur at its version and, when exact, nothing else.
func checkClient(t *testing.T, where string, client map[string]string, cur *typeSet, sub subscription, exact bool) {
	t.Helper()
	want := map[string]string{}
	for _, e := range covered(cur, sub) {
		want[e.name] = e.version
	}
	for n, v := range want {
		if client[n] != v {
			t.Fatalf("%s: client holds %s@%q, want %s (client %v)", where, n, client[n], v, client)
		}
	}
	if exact && len(client) != len(want) {
		t.Fatalf("%s: client holds %v, want %v", where, client, want)
	}
}

// TestBodiesComputedOnce checks that streams asking for the same thing share
// one encoded body.
func TestBodiesComputedOnce(t *testing.T) {
	in := newInterner()
	b := newBodies()
	r := rand.New(rand.NewPCG(1, 2))
	a, c := randomSet(r, resourcev3.EndpointType, nil), randomSet(r, resourcev3.EndpointType, nil)
	names := func() map[string]struct{} {
		return map[string]struct{}{"n01": {}, "n02": {}, "n03": {}, "n04": {}, "n05": {}}
	}
	s1, s2 := in.intern(names()), in.intern(names())
	if s1 != s2 {
		t.Fatal("equal subscriptions were not interned as one set")
	}
	var first []byte
	for i := range 100 {
		k := bodyKey{delta: true, typeURL: resourcev3.EndpointType, held: a, heldSub: subscription{names: s1}, cur: c, sub: subscription{names: s2}}
		body, err := b.get(k, nil)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = body[0]
		} else if &body[0][0] != &first[0] {
			t.Fatalf("stream %d got its own body: want the one encoded for the first", i)
		}
	}
}

// TestFrameIsTheResponseWithItsNonce checks that a frame goes on the wire as
// the response with the stream's nonce.
func TestFrameIsTheResponseWithItsNonce(t *testing.T) {
	resp := &discoverypb.DeltaDiscoveryResponse{SystemVersionInfo: "v1", TypeUrl: resourcev3.ClusterType, RemovedResources: []string{"gone"},
		Resources: []*discoverypb.Resource{{Name: "a", Version: "1", Resource: testEntry(resourcev3.ClusterType, "a", "1").any}}}
	body, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	c := encoding.GetCodecV2("proto")
	data, err := c.Marshal(&frame{body: [][]byte{body[:3], body[3:]}, nonce: "42"})
	if err != nil {
		t.Fatal(err)
	}
	var got discoverypb.DeltaDiscoveryResponse
	if err := proto.Unmarshal(data.Materialize(), &got); err != nil {
		t.Fatal(err)
	}
	want := proto.Clone(resp).(*discoverypb.DeltaDiscoveryResponse)
	want.Nonce = "42"
	if !proto.Equal(&got, want) {
		t.Fatalf("frame decodes as %v, want %v", &got, want)
	}
	// Other messages go through gRPC's proto codec unchanged.
	data, err = c.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(data.Materialize(), body) {
		t.Fatal("the codec changed the encoding of an ordinary message")
	}
}

// TestSotWRequestReadAsProtobufDoes checks the state-of-the-world request
// reader against the protobuf library, and that equal name lists (only
// those) get equal keys.
func TestSotWRequestReadAsProtobufDoes(t *testing.T) {
	req := &discoverypb.DiscoveryRequest{VersionInfo: "v1", Node: &corev3.Node{Id: "web-1", Cluster: "web"},
		ResourceNames: []string{"b", "a", "*"}, TypeUrl: resourcev3.EndpointType, ResponseNonce: "3",
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: "bad"}}
	read := func(m *discoverypb.DiscoveryRequest) *sotwRequest {
		t.Helper()
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var r sotwRequest
		cut := min(5, len(b))
		if err := encoding.GetCodecV2("proto").Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:cut]), mem.SliceBuffer(b[cut:])}, &r); err != nil {
			t.Fatal(err)
		}
		return &r
	}
	r := read(req)
	if !proto.Equal(r.GetNode(), req.Node) || r.typeURL != req.TypeUrl || r.nonce != req.ResponseNonce ||
		!proto.Equal(r.errorDetail, req.ErrorDetail) || !slices.Equal(r.nameStrings(), req.ResourceNames) || !r.star() {
		t.Fatalf("read %+v, want %v", r, req)
	}
	same := read(&discoverypb.DiscoveryRequest{ResourceNames: []string{"b", "a", "*"}, TypeUrl: resourcev3.EndpointType})
	if same.key != r.key {
		t.Error("the same names got another key")
	}
	for _, names := range [][]string{{"a", "b", "*"}, {"b", "a"}, {"ba", "", "*"}, nil} {
		if read(&discoverypb.DiscoveryRequest{ResourceNames: names}).key == r.key {
			t.Errorf("names %q got the key of %q", names, req.ResourceNames)
		}
	}
}
