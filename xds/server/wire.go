package server

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"runtime"
	"sync"
	"weak"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"

	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
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

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*sotwRequest); ok {
		n := data.Len()
		bp, _ := requestBufs.Get().(*[]byte)
		if bp == nil || cap(*bp) < n {
			b := make([]byte, n, n+n/2)
			bp = &b
		}
		*bp = (*bp)[:n]
		data.CopyTo(*bp)
		r.bufp = bp
		return r.decode(*bp)
	}
	return c.CodecV2.Unmarshal(data, v)
}

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

// sotwRequest is a state-of-the-world request, read from its bytes. Envoy
// names every resource of a type it wants in each request, so a thousand
// sidecars ACKing a change to their endpoints send a thousand lists of a
// thousand names, nearly always the list they sent before. The names are
// kept as slices of the message and summed (namesKey); a stream turns them
// into strings only when the sum differs from its last request's.
type sotwRequest struct {
	bufp        *[]byte // from requestBufs, until release
	node        *core.Node
	typeURL     string
	nonce       string
	errorDetail *rpcstatus.Status
	key         namesKey
	hasStar     bool
}

// namesKey identifies a list of names: their number and a hash of the list.
type namesKey struct {
	n   int
	sum uint64
	set bool
}

var namesSeed = maphash.MakeSeed()

func (r *sotwRequest) GetNode() *core.Node { return r.node }

// star reports whether the request names "*".
func (r *sotwRequest) star() bool { return r.hasStar }

// nameStrings returns the names, read again from the request's bytes.
func (r *sotwRequest) nameStrings() []string {
	out := make([]string, 0, r.key.n)
	b := *r.bufp
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if num == 3 && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			out = append(out, string(v))
		}
		b = b[n:]
	}
	return out
}

// requestBufs holds the buffers requests are read into: a thousand ACKs of
// 30 KB each would otherwise take fresh memory on every change.
var requestBufs sync.Pool

// release returns the request's buffer; the request's names are then gone.
func (r *sotwRequest) release() {
	if r.bufp != nil {
		requestBufs.Put(r.bufp)
		r.bufp = nil
	}
}

func (r *sotwRequest) decode(b []byte) error {
	var h maphash.Hash
	h.SetSeed(namesSeed)
	names := 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case 2: // node
			r.node = &core.Node{}
			if err := proto.Unmarshal(v, r.node); err != nil {
				return fmt.Errorf("node: %w", err)
			}
		case 3: // resource_names
			names++
			r.hasStar = r.hasStar || string(v) == "*"
			var l [binary.MaxVarintLen64]byte
			h.Write(l[:binary.PutUvarint(l[:], uint64(len(v)))])
			h.Write(v)
		case 4:
			r.typeURL = string(v)
		case 5:
			r.nonce = string(v)
		case 6: // error_detail
			r.errorDetail = &rpcstatus.Status{}
			if err := proto.Unmarshal(v, r.errorDetail); err != nil {
				return fmt.Errorf("error_detail: %w", err)
			}
		}
	}
	r.key = namesKey{n: names, sum: h.Sum64(), set: true}
	return nil
}
