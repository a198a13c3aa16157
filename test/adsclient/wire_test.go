package adsclient

import (
	"fmt"
	"testing"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestWireDecodeMatchesProto checks that Light mode reads responses as the
// protobuf library decodes them (the fields it uses), fields it skips
// included.
func TestWireDecodeMatchesProto(t *testing.T) {
	for n := range 4 {
		t.Run(fmt.Sprint(n, " resources"), func(t *testing.T) {
			var anys []*anypb.Any
			var res []*discoverypb.Resource
			var removed []string
			for i := range n {
				a := &anypb.Any{TypeUrl: resourcev3.EndpointType, Value: []byte(fmt.Sprintf("\x0a\x05svc-%d", i))}
				anys = append(anys, a)
				res = append(res, &discoverypb.Resource{Name: fmt.Sprint("svc-", i), Version: fmt.Sprint("v", i), Resource: a,
					Aliases: []string{"alias"}, Ttl: durationpb.New(5)})
				removed = append(removed, fmt.Sprint("gone-", i))
			}
			sotw := &discoverypb.DiscoveryResponse{VersionInfo: "v1", Resources: anys, Canary: true, TypeUrl: resourcev3.EndpointType, Nonce: "7"}
			delta := &discoverypb.DeltaDiscoveryResponse{SystemVersionInfo: "v2", Resources: res, TypeUrl: resourcev3.EndpointType, Nonce: "8", RemovedResources: removed}
			b, err := proto.Marshal(sotw)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeSotW(b)
			if err != nil {
				t.Fatal(err)
			}
			sotw.Canary = false // not read
			if !proto.Equal(got, sotw) {
				t.Errorf("decodeSotW = %v, want %v", got, sotw)
			}
			if b, err = proto.Marshal(delta); err != nil {
				t.Fatal(err)
			}
			gotDelta, err := decodeDelta(b)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range delta.Resources {
				r.Aliases, r.Ttl = nil, nil // not read
			}
			if !proto.Equal(gotDelta, delta) {
				t.Errorf("decodeDelta = %v, want %v", gotDelta, delta)
			}
		})
	}
	if _, err := decodeDelta([]byte{0x12, 0x05, 0x01}); err == nil {
		t.Error("decodeDelta accepted a truncated message")
	}
}

// TestEncodedAckIsTheRequest checks that a Light client's encoded ACK
// decodes as the request it stands for.
func TestEncodedAckIsTheRequest(t *testing.T) {
	for _, req := range []*discoverypb.DiscoveryRequest{
		{VersionInfo: "v1", ResourceNames: []string{"a", "b"}, TypeUrl: resourcev3.EndpointType, ResponseNonce: "4"},
		{TypeUrl: resourcev3.ListenerType, ResponseNonce: "5", ErrorDetail: &status.Status{Code: 3, Message: "no"}},
	} {
		b, err := encodeAck(encodeNames(req.GetResourceNames()), req)
		if err != nil {
			t.Fatal(err)
		}
		var got discoverypb.DiscoveryRequest
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&got, req) {
			t.Errorf("encoded ACK decodes as %v, want %v", &got, req)
		}
	}
}
