package adsclient

import (
	"fmt"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// In Light mode a response is read from its bytes: the resources' encoded
// values are slices of the received message, not copies, and nothing but the
// envelope is decoded. Thousands of simulated proxies decoding every
// resource of every response would otherwise spend more CPU than the server
// they measure.

// rawMsg receives a message undecoded, into a buffer it reuses: a Light
// client copies each response into the same memory instead of new memory
// per response (which the runtime takes from fresh pages, costing a
// thousand simulated proxies more than decoding). What is decoded from it is
// valid until the next response.
type rawMsg struct{ b []byte }

// rawCodec is gRPC's proto codec that also receives rawMsgs.
type rawCodec struct{ encoding.CodecV2 }

func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawMsg); ok {
		n := data.Len()
		if cap(r.b) < n {
			// With room to spare: responses of a type vary by a few
			// bytes, and growing by those would take fresh memory again.
			r.b = make([]byte, n, n+n/2)
		}
		r.b = r.b[:n]
		data.CopyTo(r.b)
		return nil
	}
	return c.CodecV2.Unmarshal(data, v)
}

// rawReq is a request sent as it is encoded.
type rawReq struct{ b []byte }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*rawReq); ok {
		return mem.BufferSlice{mem.SliceBuffer(r.b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// encodeNames encodes a DiscoveryRequest's resource_names (field 3): a
// state-of-the-world ACK repeats the names of the last request, so a Light
// client encodes them once per subscription.
func encodeNames(names []string) []byte {
	var b []byte
	for _, n := range names {
		b = protowire.AppendString(protowire.AppendTag(b, 3, protowire.BytesType), n)
	}
	return b
}

// encodeAck encodes an ACK (or NACK) after the encoded names.
func encodeAck(names []byte, req *discoverypb.DiscoveryRequest) ([]byte, error) {
	b := make([]byte, 0, len(names)+len(req.GetVersionInfo())+len(req.GetTypeUrl())+len(req.GetResponseNonce())+16)
	b = append(b, names...)
	for _, f := range []struct {
		num protowire.Number
		v   string
	}{{1, req.GetVersionInfo()}, {4, req.GetTypeUrl()}, {5, req.GetResponseNonce()}} {
		if f.v != "" {
			b = protowire.AppendString(protowire.AppendTag(b, f.num, protowire.BytesType), f.v)
		}
	}
	if req.GetErrorDetail() != nil {
		d, err := proto.Marshal(req.GetErrorDetail())
		if err != nil {
			return nil, err
		}
		b = protowire.AppendBytes(protowire.AppendTag(b, 6, protowire.BytesType), d)
	}
	return b, nil
}

func newRawCodec() rawCodec { return rawCodec{encoding.GetCodecV2(protocodec.Name)} }

// wireFields calls f for each field of an encoded message.
func wireFields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(num, typ, v); err != nil {
			return err
		}
	}
	return nil
}

func decodeAny(b []byte) (*anypb.Any, error) {
	a := &anypb.Any{}
	err := wireFields(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			a.TypeUrl = string(v)
		case num == 2 && typ == protowire.BytesType:
			a.Value = v
		}
		return nil
	})
	return a, err
}

// decodeSotW reads a DiscoveryResponse's version, type, nonce and resources.
func decodeSotW(b []byte) (*discoverypb.DiscoveryResponse, error) {
	r := &discoverypb.DiscoveryResponse{}
	err := wireFields(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 1:
			r.VersionInfo = string(v)
		case 2:
			a, err := decodeAny(v)
			if err != nil {
				return fmt.Errorf("resource: %w", err)
			}
			r.Resources = append(r.Resources, a)
		case 4:
			r.TypeUrl = string(v)
		case 5:
			r.Nonce = string(v)
		}
		return nil
	})
	return r, err
}

// decodeDelta reads a DeltaDiscoveryResponse's version, type, nonce,
// resources (name, version, value) and removed names.
func decodeDelta(b []byte) (*discoverypb.DeltaDiscoveryResponse, error) {
	r := &discoverypb.DeltaDiscoveryResponse{}
	err := wireFields(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 1:
			r.SystemVersionInfo = string(v)
		case 2:
			res := &discoverypb.Resource{}
			err := wireFields(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
				if typ != protowire.BytesType {
					return nil
				}
				switch num {
				case 1:
					res.Version = string(v)
				case 2:
					a, err := decodeAny(v)
					if err != nil {
						return err
					}
					res.Resource = a
				case 3:
					res.Name = string(v)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("resource: %w", err)
			}
			r.Resources = append(r.Resources, res)
		case 4:
			r.TypeUrl = string(v)
		case 5:
			r.Nonce = string(v)
		case 6:
			r.RemovedResources = append(r.RemovedResources, string(v))
		}
		return nil
	})
	return r, err
}
