package config

import (
	"bytes"
	"reflect"
	"slices"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// One-line blocks with several arguments.
//
// HCL allows a block on one line only with a single argument. Bowline's
// authorization rules read best on one line, as the documentation writes
// them:
//
//	to { methods = ["GET"]  paths = ["/api/*"] }
//
// parseNative accepts that: it finds one-line blocks holding several
// arguments, parses the file with those blocks spread over several lines,
// and maps every position in the syntax tree (and in the diagnostics) back
// to the file as written, so that file:line:column stay exact. A file
// without such a block is parsed as it is: this only turns what would be a
// syntax error into what the user meant.

// parseNative parses native HCL syntax.
func parseNative(src []byte, filename string) (*hcl.File, hcl.Diagnostics) {
	return parseNativeAt(src, filename, hcl.InitialPos)
}

// parseNativeAt parses native HCL syntax that starts at start in its file
// (at the beginning of a line: start.Column is 1), so that every position in
// the syntax tree and the diagnostics is the file's.
func parseNativeAt(src []byte, filename string, start hcl.Pos) (*hcl.File, hcl.Diagnostics) {
	var inserts []int
	if mayHoldOneLineBlocks(src) {
		inserts = oneLineSplits(src, filename)
	}
	if len(inserts) == 0 {
		return hclsyntax.ParseConfig(src, filename, start)
	}
	mod := make([]byte, 0, len(src)+len(inserts))
	prev := 0
	for _, at := range inserts {
		mod = append(mod, src[prev:at]...)
		mod = append(mod, '\n')
		prev = at
	}
	mod = append(mod, src[prev:]...)
	file, diags := hclsyntax.ParseConfig(mod, filename, hcl.InitialPos)
	m := newPosMap(src, inserts)
	m.base = start
	for _, d := range diags {
		if d.Subject != nil {
			r := m.rng(*d.Subject)
			d.Subject = &r
		}
		if d.Context != nil {
			r := m.rng(*d.Context)
			d.Context = &r
		}
	}
	if file != nil {
		if body, ok := file.Body.(*hclsyntax.Body); ok {
			m.fix(reflect.ValueOf(body), map[uintptr]bool{})
		}
		file.Bytes = src
	}
	return file, diags
}

// mayHoldOneLineBlocks reports whether src may hold a one-line block with
// several arguments: only when some '{' is followed by more than blanks on
// its line (oneLineSplits, which lexes the whole source, finds none
// otherwise, as every block's opening brace then ends its line).
func mayHoldOneLineBlocks(src []byte) bool {
	for i := 0; ; {
		j := bytes.IndexByte(src[i:], '{')
		if j < 0 {
			return false
		}
		i += j + 1
		for ; i < len(src) && (src[i] == ' ' || src[i] == '\t' || src[i] == '\r'); i++ {
		}
		if i < len(src) && src[i] != '\n' {
			return true
		}
	}
}

// oneLineSplits returns the byte offsets at which a newline makes the
// one-line blocks with several arguments multi-line: after the opening
// brace, before every argument but the first, and before the closing brace.
func oneLineSplits(src []byte, filename string) []int {
	toks, diags := hclsyntax.LexConfig(src, filename, hcl.Pos{Byte: 0, Line: 1, Column: 1})
	if diags.HasErrors() {
		return nil
	}
	var out []int
	lineStart := true
	var first hclsyntax.TokenType
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if lineStart {
			first, lineStart = t.Type, false
		}
		if endsLine(t) {
			lineStart = true
			continue
		}
		// A block's opening brace: the line starts with its type, and the
		// brace follows the type or a label.
		if t.Type != hclsyntax.TokenOBrace || first != hclsyntax.TokenIdent || i == 0 {
			continue
		}
		if p := toks[i-1].Type; p != hclsyntax.TokenIdent && p != hclsyntax.TokenCQuote {
			continue
		}
		if afterEqual(toks[:i]) {
			continue // an object constructor after an '='
		}
		splits, end, ok := splitBlock(toks, i)
		if ok && len(splits) > 1 {
			out = append(out, toks[i].Range.End.Byte)
			out = append(out, splits[1:]...)
			out = append(out, toks[end].Range.Start.Byte)
		}
		if end > i {
			i = end
		}
	}
	return out
}

// endsLine reports whether a token ends its line: a newline, or a line
// comment (which holds its newline).
func endsLine(t hclsyntax.Token) bool {
	return t.Type == hclsyntax.TokenNewline || (t.Type == hclsyntax.TokenComment && len(t.Bytes) > 0 && t.Bytes[len(t.Bytes)-1] == '\n')
}

// afterEqual reports whether the current line has an '=' so far.
func afterEqual(toks hclsyntax.Tokens) bool {
	for i := len(toks) - 1; i >= 0 && !endsLine(toks[i]); i-- {
		if toks[i].Type == hclsyntax.TokenEqual {
			return true
		}
	}
	return false
}

// splitBlock scans the one-line block whose opening brace is toks[open]:
// it returns the offsets where its arguments start and the index of its
// closing brace; ok is false unless the block is on one line and holds only
// arguments.
func splitBlock(toks hclsyntax.Tokens, open int) (starts []int, end int, ok bool) {
	depth := 0
	for j := open + 1; j < len(toks); j++ {
		t := toks[j]
		switch t.Type {
		case hclsyntax.TokenNewline, hclsyntax.TokenComment, hclsyntax.TokenEOF, hclsyntax.TokenOHeredoc:
			if t.Type == hclsyntax.TokenComment && !endsLine(t) {
				continue
			}
			if depth == 0 || t.Type != hclsyntax.TokenNewline {
				return nil, j, false
			}
		case hclsyntax.TokenOBrace, hclsyntax.TokenOBrack, hclsyntax.TokenOParen,
			hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl, hclsyntax.TokenOQuote:
			depth++
		case hclsyntax.TokenCBrack, hclsyntax.TokenCParen, hclsyntax.TokenTemplateSeqEnd, hclsyntax.TokenCQuote:
			depth--
		case hclsyntax.TokenCBrace:
			if depth == 0 {
				return starts, j, true
			}
			depth--
		case hclsyntax.TokenIdent:
			if depth == 0 && j+1 < len(toks) && toks[j+1].Type == hclsyntax.TokenEqual {
				starts = append(starts, t.Range.Start.Byte)
			} else if depth == 0 && j+1 < len(toks) && (toks[j+1].Type == hclsyntax.TokenOBrace || toks[j+1].Type == hclsyntax.TokenOQuote) {
				return nil, j, false // a nested block
			}
		}
	}
	return nil, len(toks) - 1, false
}

// posMap maps positions in the source with newlines inserted back to the
// source as written.
type posMap struct {
	src        []byte
	inserts    []int // offsets in src, ascending
	lineStarts []int
	// base is where src starts in its file (at the beginning of a line).
	base hcl.Pos
}

func newPosMap(src []byte, inserts []int) *posMap {
	m := &posMap{src: src, inserts: inserts, lineStarts: []int{0}}
	for i, c := range src {
		if c == '\n' {
			m.lineStarts = append(m.lineStarts, i+1)
		}
	}
	return m
}

func (m *posMap) pos(p hcl.Pos) hcl.Pos {
	// The k-th insert sits at modified offset inserts[k]+k.
	k := 0
	for k < len(m.inserts) && m.inserts[k]+k < p.Byte {
		k++
	}
	b := min(max(p.Byte-k, 0), len(m.src))
	line, _ := slices.BinarySearch(m.lineStarts, b+1)
	start := m.lineStarts[line-1]
	return hcl.Pos{Byte: m.base.Byte + b, Line: m.base.Line - 1 + line, Column: utf8.RuneCount(m.src[start:b]) + 1}
}

func (m *posMap) rng(r hcl.Range) hcl.Range {
	r.Start, r.End = m.pos(r.Start), m.pos(r.End)
	return r
}

var (
	posType  = reflect.TypeOf(hcl.Pos{})
	ctyValue = reflect.TypeOf(cty.Value{})
	ctyType  = reflect.TypeOf(cty.Type{})
)

// fix rewrites every hcl.Pos reachable from v (the syntax tree's exported
// fields). seen guards against fixing a shared node twice.
func (m *posMap) fix(v reflect.Value, seen map[uintptr]bool) {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() || seen[v.Pointer()] {
			return
		}
		seen[v.Pointer()] = true
		m.fix(v.Elem(), seen)
	case reflect.Interface:
		if v.IsNil() {
			return
		}
		e := v.Elem()
		if e.Kind() == reflect.Pointer {
			m.fix(e, seen)
			return
		}
		if !v.CanSet() {
			return
		}
		c := reflect.New(e.Type()).Elem()
		c.Set(e)
		m.fix(c, seen)
		v.Set(c)
	case reflect.Struct:
		if v.Type() == posType {
			if v.CanSet() {
				v.Set(reflect.ValueOf(m.pos(v.Interface().(hcl.Pos))))
			}
			return
		}
		if v.Type() == ctyValue || v.Type() == ctyType {
			return
		}
		for i := 0; i < v.NumField(); i++ {
			if f := v.Field(i); f.CanSet() {
				m.fix(f, seen)
			}
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			m.fix(v.Index(i), seen)
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			val := it.Value()
			if val.Kind() == reflect.Pointer {
				m.fix(val, seen)
				continue
			}
			c := reflect.New(val.Type()).Elem()
			c.Set(val)
			m.fix(c, seen)
			v.SetMapIndex(it.Key(), c)
		}
	}
}
