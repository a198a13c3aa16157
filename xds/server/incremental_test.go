package server

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestIncrementalDeltaMatchesFull drives one proxy's delta stream through
// random changes of a layered type set (a shared base, as the outbound part
// of sidecars, and an own layer) and checks that every incremental response
// brings the proxy to exactly the state a full comparison would: the
// resources it holds, with their versions, equal the subscribed part of the
// current set.
func TestIncrementalDeltaMatchesFull(t *testing.T) {
	for _, wildcard := range []bool{false, true} {
		t.Run(fmt.Sprintf("wildcard=%t", wildcard), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			f := newChangingSet()

			c := newXDSCache()
			node := &core.Node{Id: "proxy-1"}
			var subscribe []string
			if !wildcard {
				for n := range f.base {
					subscribe = append(subscribe, n)
				}
				subscribe = append(subscribe, "local_app", "not-yet-there")
			}
			sub := streamv3.NewDeltaSubscription(subscribe, nil, nil, wildcard)
			if wildcard {
				sub = streamv3.NewDeltaSubscription([]string{"*"}, nil, nil, false)
			}
			held := map[string]string{} // what the proxy holds: name -> version
			ch := make(chan cachev3.DeltaResponse, 1)
			nonce := 0
			watch := func(req *discoverypb.DeltaDiscoveryRequest) {
				t.Helper()
				if _, err := c.CreateDeltaWatch(&cachev3.DeltaRequest{Node: node, TypeUrl: resourcev3.EndpointType,
					ResponseNonce: req.GetResponseNonce(), ResourceNamesSubscribe: req.GetResourceNamesSubscribe()}, sub, ch); err != nil {
					t.Fatal(err)
				}
			}
			receive := func() bool {
				select {
				case r := <-ch:
					resp, err := r.GetDeltaDiscoveryResponse()
					if err != nil {
						t.Fatal(err)
					}
					for _, res := range resp.GetResources() {
						held[res.GetName()] = res.GetVersion()
					}
					for _, n := range resp.GetRemovedResources() {
						delete(held, n)
					}
					sub.SetReturnedResources(r.GetNextVersionMap())
					nonce++
					return true
				default:
					return false
				}
			}
			check := func(step int) {
				t.Helper()
				want := map[string]string{}
				ts := c.nodes[node.GetId()].types[resourcev3.EndpointType]
				ts.each(func(e *entry) {
					if _, ok := sub.SubscribedResources()[e.name]; ok || wildcard {
						want[e.name] = e.version
					}
				})
				if !maps.Equal(held, want) {
					t.Fatalf("step %d: the proxy holds %v, want %v", step, held, want)
				}
				if !maps.Equal(sub.ReturnedResources(), want) {
					t.Fatalf("step %d: returned resources %v, want %v", step, sub.ReturnedResources(), want)
				}
			}

			c.set(node.GetId(), map[string]*typeSet{resourcev3.EndpointType: f.typeSet()})
			watch(&discoverypb.DeltaDiscoveryRequest{ResourceNamesSubscribe: subscribe})
			if !receive() {
				t.Fatal("no first response")
			}
			check(0)
			incremental := 0
			for step := 1; step <= 300; step++ {
				// The proxy ACKs; then the set changes, or not.
				watch(&discoverypb.DeltaDiscoveryRequest{ResponseNonce: fmt.Sprint(nonce)})
				f.change(rng, step)
				before := c.nodes[node.GetId()].sent[resourcev3.EndpointType]
				c.set(node.GetId(), map[string]*typeSet{resourcev3.EndpointType: f.typeSet()})
				if receive() {
					if before != nil && sameMap(before.next, c.nodes[node.GetId()].sent[resourcev3.EndpointType].next) {
						t.Fatalf("step %d: the version map handed over was modified in place", step)
					}
					incremental++
				} else {
					// Nothing for this proxy: the watch stays open; close it
					// as the next request will.
					c.mu.Lock()
					clear(c.nodes[node.GetId()].watches)
					c.mu.Unlock()
				}
				check(step)
			}
			if incremental < 100 {
				t.Fatalf("only %d responses in 300 steps", incremental)
			}
		})
	}
}

// changingSet is a proxy's endpoints as a layered type set (a shared base of
// 50 services, as the outbound part of sidecars, and an own layer) that
// changes at random.
type changingSet struct {
	base, own map[string]*entry
}

func newChangingSet() *changingSet {
	f := &changingSet{base: map[string]*entry{}, own: map[string]*entry{"local_app": entryOf("local_app", 0)}}
	for i := range 50 {
		n := fmt.Sprintf("svc-%02d", i)
		f.base[n] = entryOf(n, 0)
	}
	return f
}

func entryOf(name string, gen int) *entry {
	return &entry{name: name, version: fmt.Sprintf("v%d", gen), any: &anypb.Any{TypeUrl: resourcev3.EndpointType, Value: []byte(name)}}
}

// typeSet builds the current set, as the server does: the base and the own
// layer each sorted by name, then layered.
func (f *changingSet) typeSet() *typeSet {
	byName := func(a, b *entry) int { return strings.Compare(a.name, b.name) }
	return layer(newTypeSet(slices.SortedFunc(maps.Values(f.base), byName)), newTypeSet(slices.SortedFunc(maps.Values(f.own), byName)))
}

// change makes one random change, named by step.
func (f *changingSet) change(rng *rand.Rand, step int) {
	n := fmt.Sprintf("svc-%02d", rng.IntN(50))
	switch k := rng.IntN(10); {
	case k < 5: // one service's endpoints change
		if _, ok := f.base[n]; ok {
			f.base[n] = entryOf(n, step)
		}
	case k < 6: // a service goes
		delete(f.base, n)
	case k < 7: // a service comes (back)
		f.base[n] = entryOf(n, step)
	case k < 8: // the proxy's own part changes
		f.own["local_app"] = entryOf("local_app", step)
	case k < 9: // every service changes
		for n := range f.base {
			f.base[n] = entryOf(n, step)
		}
	default: // nothing changes (another type did)
	}
}

// TestIncrementalSotWMatchesFull is TestIncrementalDeltaMatchesFull for
// state-of-the-world endpoints: after every change, the proxy holds the
// current version of every subscribed resource that exists, and the
// returned resources go-control-plane keeps are exactly those.
func TestIncrementalSotWMatchesFull(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	f := newChangingSet()
	var names []string
	for i := range 50 {
		names = append(names, fmt.Sprintf("svc-%02d", i))
	}
	names = append(names, "local_app")

	c := newXDSCache()
	node := &core.Node{Id: "proxy-1"}
	sub := streamv3.NewSotwSubscription(names, false)
	held := map[string]string{}
	version := ""
	ch := make(chan cachev3.Response, 1)
	watch := func() {
		t.Helper()
		sub.SetResourceSubscription(names) // as the server does on every request
		if _, err := c.CreateWatch(&cachev3.Request{Node: node, TypeUrl: resourcev3.EndpointType, VersionInfo: version, ResourceNames: names}, sub, ch); err != nil {
			t.Fatal(err)
		}
	}
	receive := func() bool {
		select {
		case r := <-ch:
			resp, err := r.GetDiscoveryResponse()
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range resp.GetResources() {
				held[string(a.GetValue())] = r.GetReturnedResources()[string(a.GetValue())]
			}
			version = resp.GetVersionInfo()
			sub.SetReturnedResources(r.GetReturnedResources())
			return true
		default:
			return false
		}
	}
	check := func(step int) {
		t.Helper()
		want := map[string]string{}
		c.nodes[node.GetId()].types[resourcev3.EndpointType].each(func(e *entry) { want[e.name] = e.version })
		for n, v := range want {
			if held[n] != v {
				t.Fatalf("step %d: the proxy holds %s at %q, want %q", step, n, held[n], v)
			}
		}
		if !maps.Equal(sub.ReturnedResources(), want) {
			t.Fatalf("step %d: returned resources %v, want %v", step, sub.ReturnedResources(), want)
		}
	}
	c.set(node.GetId(), map[string]*typeSet{resourcev3.EndpointType: f.typeSet()})
	watch()
	if !receive() {
		t.Fatal("no first response")
	}
	check(0)
	responses := 0
	for step := 1; step <= 300; step++ {
		watch()
		f.change(rng, step)
		c.set(node.GetId(), map[string]*typeSet{resourcev3.EndpointType: f.typeSet()})
		if receive() {
			responses++
		} else {
			c.mu.Lock()
			clear(c.nodes[node.GetId()].watches)
			c.mu.Unlock()
			// No response: the set only lost resources, which a
			// state-of-the-world proxy keeps until told otherwise.
			continue
		}
		check(step)
	}
	if responses < 100 {
		t.Fatalf("only %d responses in 300 steps", responses)
	}
}
