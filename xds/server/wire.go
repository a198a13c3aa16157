package server

import (
	"hash/maphash"
	"runtime"
	"sync"
	"weak"

	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// Responses encoded once for every stream. A change to every service sends
// each of a thousand proxies the same few hundred kilobytes of endpoints;
// encoding that response per stream (as gRPC's codec does with a message)
// costs the server more than everything else in the change. Instead a
// response is encoded once, without its nonce, and shared (body, memoized
// in bodies.go by what it was computed from); each stream sends that body
// followed by its own nonce field. A protobuf message may carry its fields
// in any order, so body+nonce is the response the stream means to send.

// nonceField is the field number of the nonce in both DiscoveryResponse and
// DeltaDiscoveryResponse.
const nonceField protowire.Number = 5

// frame is a response as a stream sends it: a shared body (in parts, see
// bodies.layered) and the stream's nonce.
type frame struct {
	body  [][]byte
	nonce string
}

// codec is gRPC's proto codec, which also sends frames as they are: the
// shared body is handed to the transport without a copy.
type codec struct{ encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*frame); ok {
		tail := protowire.AppendString(protowire.AppendTag(make([]byte, 0, len(f.nonce)+2), nonceField, protowire.BytesType), f.nonce)
		out := make(mem.BufferSlice, 0, len(f.body)+1)
		for _, part := range f.body {
			out = append(out, mem.SliceBuffer(part))
		}
		return append(out, mem.SliceBuffer(tail)), nil
	}
	return c.CodecV2.Marshal(v)
}

// The codec replaces gRPC's "proto" codec in the process: it behaves exactly
// as that codec for every message, and only frames, which nothing but this
// package makes, take the other path. Registering it here (rather than as a
// server option) keeps every gRPC server that serves this package, including
// those tests and embedders create, able to send frames.
func init() {
	encoding.RegisterCodecV2(codec{encoding.GetCodecV2(protocodec.Name)})
}

// nameSet is an immutable set of resource names. Sets are interned: the
// streams subscribed to the same names (a thousand sidecars asking for the
// same thousand load assignments) share one, so a subscription costs a
// stream a pointer, and responses computed for one stream serve the others.
type nameSet struct {
	names map[string]struct{}
	sum   uint64 // order-independent hash of the names
}

func (n *nameSet) has(name string) bool {
	if n == nil {
		return false
	}
	_, ok := n.names[name]
	return ok
}

func (n *nameSet) len() int {
	if n == nil {
		return 0
	}
	return len(n.names)
}

// interner hands out the one nameSet for a set of names, holding sets only
// while some stream uses them.
type interner struct {
	seed maphash.Seed
	mu   sync.Mutex
	sets map[uint64][]weak.Pointer[nameSet]
}

func newInterner() *interner {
	return &interner{seed: maphash.MakeSeed(), sets: map[uint64][]weak.Pointer[nameSet]{}}
}

func (in *interner) hash(name string) uint64 { return maphash.String(in.seed, name) }

// matches reports whether the names are exactly set's (names may repeat).
func (in *interner) matchesSub(set *nameSet, names []string) bool {
	if set == nil {
		return len(names) == 0
	}
	if set.len() != len(names) {
		return false // a repeated name makes this a false "different": harmless
	}
	var sum uint64
	for _, n := range names {
		if !set.has(n) {
			return false
		}
		sum += in.hash(n)
	}
	return sum == set.sum
}

// intern returns the set of these names (nil when there are none). It takes
// ownership of names.
func (in *interner) intern(names map[string]struct{}) *nameSet {
	if len(names) == 0 {
		return nil
	}
	var sum uint64
	for n := range names {
		sum += in.hash(n)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, wp := range in.sets[sum] {
		if s := wp.Value(); s != nil && sameNames(s.names, names) {
			return s
		}
	}
	s := &nameSet{names: names, sum: sum}
	in.sets[sum] = append(in.sets[sum], weak.Make(s))
	runtime.AddCleanup(s, in.forget, sum)
	return s
}

// forget drops the collected sets under one hash.
func (in *interner) forget(sum uint64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	live := in.sets[sum][:0]
	for _, wp := range in.sets[sum] {
		if wp.Value() != nil {
			live = append(live, wp)
		}
	}
	if len(live) == 0 {
		delete(in.sets, sum)
		return
	}
	in.sets[sum] = live
}

// sameNames reports whether two sets hold the same names.
func sameNames(a, b map[string]struct{}) bool {
	if len(a) != len(b) {
		return false
	}
	for n := range a {
		if _, ok := b[n]; !ok {
			return false
		}
	}
	return true
}
