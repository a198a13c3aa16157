package policy

import (
	"strings"
)

// PatternKind is how a pattern matches a value.
type PatternKind uint8

// The pattern kinds, as written in HCL.
const (
	// Exact: "value".
	Exact PatternKind = iota
	// Prefix: "value*".
	Prefix
	// Suffix: "*value".
	Suffix
	// Any: "*", any value that is present.
	Any
)

// Pattern is one value of a match list: exact, "prefix*", "*suffix" or "*".
// Fold patterns compare without regard to case (hosts); their Value is
// lower case.
type Pattern struct {
	Kind  PatternKind
	Value string
	Fold  bool
}

// ParsePattern reads a pattern as written ("*" at the start or end). The
// configuration has checked it.
func ParsePattern(s string) Pattern {
	switch {
	case s == "*":
		return Pattern{Kind: Any}
	case strings.HasSuffix(s, "*"):
		return Pattern{Kind: Prefix, Value: strings.TrimSuffix(s, "*")}
	case strings.HasPrefix(s, "*"):
		return Pattern{Kind: Suffix, Value: strings.TrimPrefix(s, "*")}
	}
	return Pattern{Kind: Exact, Value: s}
}

func parsePatterns(ss []string, fold bool) []Pattern {
	if ss == nil {
		return nil
	}
	out := make([]Pattern, len(ss))
	for i, s := range ss {
		out[i] = ParsePattern(s)
		if fold {
			out[i].Fold = true
			out[i].Value = strings.ToLower(out[i].Value)
		}
	}
	return out
}

// String renders the pattern as written.
func (p Pattern) String() string {
	switch p.Kind {
	case Prefix:
		return p.Value + "*"
	case Suffix:
		return "*" + p.Value
	case Any:
		return "*"
	}
	return p.Value
}

// Match reports whether a present value matches. It does not allocate.
func (p *Pattern) Match(s string) bool {
	n := len(p.Value)
	switch p.Kind {
	case Any:
		return true
	case Exact:
		if p.Fold {
			return strings.EqualFold(s, p.Value)
		}
		return s == p.Value
	case Prefix:
		if len(s) < n {
			return false
		}
		if p.Fold {
			return strings.EqualFold(s[:n], p.Value)
		}
		return s[:n] == p.Value
	case Suffix:
		if len(s) < n {
			return false
		}
		if p.Fold {
			return strings.EqualFold(s[len(s)-n:], p.Value)
		}
		return s[len(s)-n:] == p.Value
	}
	return false
}

// matchAny reports whether s matches one of the patterns.
func matchAny(ps []Pattern, s string) bool {
	for i := range ps {
		if ps[i].Match(s) {
			return true
		}
	}
	return false
}
