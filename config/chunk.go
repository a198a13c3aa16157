package config

import (
	"bytes"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Decoding a large file in chunks.
//
// A registry of a thousand services in one file is some 600 KB of HCL, and
// parsing it whole costs a good fraction of a second; a change to one
// service changes the file, so the whole file would be parsed again. The
// loader instead cuts a native-syntax file into chunks of whole lines,
// each ending with a line holding only "}" (where a top-level block
// usually closes), decodes each chunk on its own at its position in the
// file, and keeps the chunks it decoded: the next version of the file
// reuses those whose text is unchanged, and only the changed ones are
// parsed again.
//
// Decoding chunk by chunk gives what decoding the whole file gives when no
// chunk has any diagnostic: a chunk that parses without error ends outside
// any comment, string, heredoc, expression or block (an unterminated one is
// an error: its last line's "}" would be left over or left open), so the
// file's tokens are the chunks' tokens one after the other, and its
// top-level blocks are the chunks' blocks. The only checks that span the
// blocks of a file (one mesh, consul, ... block per file) are made again
// when the chunks are put together. Whenever anything in any chunk is
// reported, even a warning, or a chunk cut where no top-level block ends
// fails to parse, the loader decodes the whole file the usual way instead,
// so that every diagnostic is exactly what it always was.

// chunk is a run of whole lines of a file.
type chunk struct {
	text  []byte
	start hcl.Pos // where text starts in the file; Column is 1
}

// splitChunks cuts src after every line that holds only "}" (and blanks).
func splitChunks(src []byte) []chunk {
	var out []chunk
	start := hcl.InitialPos
	for from := 0; ; {
		// The next '}' that starts a line.
		i := bytes.IndexByte(src[from:], '}')
		if i < 0 {
			break
		}
		p := from + i
		from = p + 1
		if p > 0 && src[p-1] != '\n' {
			continue
		}
		// The rest of its line must be blank.
		e := p + 1
		for e < len(src) && (src[e] == ' ' || src[e] == '\t' || src[e] == '\r') {
			e++
		}
		if e == len(src) {
			break // the last line: it ends the last chunk anyway
		}
		if src[e] != '\n' {
			continue
		}
		e++
		out = append(out, chunk{text: src[start.Byte:e], start: start})
		start = hcl.Pos{Byte: e, Line: start.Line + bytes.Count(src[start.Byte:e], []byte("\n")), Column: 1}
		from = e
	}
	if start.Byte < len(src) {
		out = append(out, chunk{text: src[start.Byte:], start: start})
	}
	return out
}

// decodedChunk is what one chunk decoded to, at the position it had.
type decodedChunk struct {
	text  string
	start hcl.Pos
	frag  *fragment
}

// decodeChunks decodes a file chunk by chunk, reusing the chunks of the
// file's previous decoding. ok is false when the file is to be decoded
// whole: a JSON file, a file of one chunk, or a chunk with diagnostics.
func (l *loader) decodeChunks(f File) (frag *fragment, ok bool) {
	if strings.HasSuffix(f.Name, ".json") {
		return nil, false
	}
	chunks := splitChunks(f.Content)
	if len(chunks) < 2 {
		delete(l.chunks, f.Name)
		return nil, false
	}
	prev := l.chunks[f.Name]
	next := make(map[string]*decodedChunk, len(chunks))
	frags := make([]*fragment, 0, len(chunks))
	for _, c := range chunks {
		d := prev[string(c.text)]
		switch {
		case d != nil && d.start == c.start:
		case d != nil && !d.frag.hasRules():
			// Only services, which keep their ranges in three places: the
			// same blocks, moved.
			d = &decodedChunk{text: d.text, start: c.start, frag: &fragment{services: moveServices(d.frag.services, c.start.Byte-d.start.Byte, c.start.Line-d.start.Line)}}
		default:
			file, diags := parseNativeAt(c.text, f.Name, c.start)
			if len(diags) > 0 {
				return nil, false
			}
			fr, diags := decodeFile(file)
			if len(diags) > 0 {
				return nil, false
			}
			d = &decodedChunk{text: string(c.text), start: c.start, frag: fr}
		}
		next[d.text] = d
		frags = append(frags, d.frag)
	}
	frag, ok = joinFragments(frags)
	if !ok {
		return nil, false
	}
	l.chunks[f.Name] = next
	return frag, true
}

// joinFragments puts the fragments of a file's chunks together, in order;
// ok is false when two chunks hold a block that a file may hold once (the
// whole file's decoding reports it).
func joinFragments(frags []*fragment) (out *fragment, ok bool) {
	out = &fragment{}
	n := 0
	for _, fr := range frags {
		n += len(fr.services)
	}
	if n > 0 {
		out.services = make([]*ServiceDecl, 0, n)
	}
	for _, fr := range frags {
		if !setOnce(&out.mesh, fr.mesh) || !setOnce(&out.consul, fr.consul) || !setOnce(&out.nomad, fr.nomad) ||
			!setOnce(&out.k8s, fr.k8s) || !setOnce(&out.identity, fr.identity) || !setOnce(&out.tel, fr.tel) {
			return nil, false
		}
		out.services = append(out.services, fr.services...)
		out.defaults = append(out.defaults, fr.defaults...)
		out.subsets = append(out.subsets, fr.subsets...)
		out.routes = append(out.routes, fr.routes...)
		out.authz = append(out.authz, fr.authz...)
		out.jwt = append(out.jwt, fr.jwt...)
		out.rlimits = append(out.rlimits, fr.rlimits...)
	}
	return out, true
}

func setOnce[T any](dst **T, v *T) bool {
	if v == nil {
		return true
	}
	if *dst != nil {
		return false
	}
	*dst = v
	return true
}

// moveServices returns copies of service declarations moved by dByte bytes
// and dLine lines in their file.
func moveServices(svcs []*ServiceDecl, dByte, dLine int) []*ServiceDecl {
	out := make([]*ServiceDecl, len(svcs))
	for i, s := range svcs {
		c := *s
		c.DeclRange = moveRange(s.DeclRange, dByte, dLine)
		if s.Endpoints != nil {
			c.Endpoints = make([]*EndpointDecl, len(s.Endpoints))
			for j, e := range s.Endpoints {
				ec := *e
				ec.DeclRange = moveRange(e.DeclRange, dByte, dLine)
				c.Endpoints[j] = &ec
			}
		}
		if s.Upstreams != nil {
			c.Upstreams = make([]*UpstreamDecl, len(s.Upstreams))
			for j, u := range s.Upstreams {
				uc := *u
				uc.DeclRange = moveRange(u.DeclRange, dByte, dLine)
				c.Upstreams[j] = &uc
			}
		}
		out[i] = &c
	}
	return out
}

func moveRange(r hcl.Range, dByte, dLine int) hcl.Range {
	r.Start.Byte += dByte
	r.Start.Line += dLine
	r.End.Byte += dByte
	r.End.Line += dLine
	return r
}
