package xdsbench

import "google.golang.org/protobuf/encoding/protowire"

// field returns the next field of an encoded message: its number, wire type,
// value (for length-delimited fields) or varint, and the rest of the
// message; ok is false at the end or on malformed input.
func field(b []byte) (num protowire.Number, typ protowire.Type, val []byte, v uint64, rest []byte, ok bool) {
	if len(b) == 0 {
		return 0, 0, nil, 0, nil, false
	}
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return 0, 0, nil, 0, nil, false
	}
	b = b[n:]
	switch typ {
	case protowire.BytesType:
		val, n = protowire.ConsumeBytes(b)
	case protowire.VarintType:
		v, n = protowire.ConsumeVarint(b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, b)
	}
	if n < 0 {
		return 0, 0, nil, 0, nil, false
	}
	return num, typ, val, v, b[n:], true
}

// sub returns the last length-delimited field num of b.
func sub(b []byte, num protowire.Number) []byte {
	var out []byte
	for {
		n, typ, val, _, rest, ok := field(b)
		if !ok {
			return out
		}
		if n == num && typ == protowire.BytesType {
			out = val
		}
		b = rest
	}
}

// markerGeneration reads the generation out of an encoded
// ClusterLoadAssignment without decoding it: the highest port at or above
// MarkerBase among its endpoints (endpoints.lb_endpoints.endpoint.address.
// socket_address.port_value), minus MarkerBase; -1 when there is none.
func markerGeneration(cla []byte) int {
	best := -1
	for b := cla; ; {
		n, typ, lle, _, rest, ok := field(b) // endpoints (2)
		if !ok {
			return best
		}
		b = rest
		if n != 2 || typ != protowire.BytesType {
			continue
		}
		for {
			n, typ, lbe, _, rest, ok := field(lle) // lb_endpoints (2)
			if !ok {
				break
			}
			lle = rest
			if n != 2 || typ != protowire.BytesType {
				continue
			}
			sa := sub(sub(sub(lbe, 1), 1), 1) // endpoint.address.socket_address
			for {
				n, typ, _, v, rest, ok := field(sa)
				if !ok {
					break
				}
				sa = rest
				if n == 3 && typ == protowire.VarintType && v >= MarkerBase && int(v)-MarkerBase > best {
					best = int(v) - MarkerBase
				}
			}
		}
	}
}
