package ratelimit

import (
	"strconv"
	"strings"
	"time"

	commonrl "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bowlinemesh/bowline/config"
)

// Descriptor entry keys of the wire contract (doc.go).
const (
	KeyDestination  = "destination"
	KeySource       = "source"
	KeyPrincipal    = "principal"
	KeyPath         = "path"
	KeyHeaderPrefix = "header:"
)

// Rule is one global limit, compiled.
type Rule struct {
	// ID is the limit's config.GlobalLimit ID, "<namespace>/<service>/<i>".
	ID       string
	Requests uint32
	Per      time.Duration
	// Keys are the descriptor keys after "destination".
	Keys    []string
	OnError config.OnError
	// Matched is true when the limit applies to some requests only.
	Matched bool

	perNanos int64
	// paths marks the entries (after destination) that carry a path.
	paths []bool
	// limit is the DescriptorStatus's current_limit, shared by responses.
	limit *rlsv3.RateLimitResponse_RateLimit
	// policy is this limit's quota policy in x-ratelimit-limit ("N;w=S"),
	// header the whole header value when it is the only limit.
	policy, header string
	c              ruleCounters
}

// group is the limits of one destination with the same descriptor keys:
// the one with a match (at most one) first.
type group struct {
	keys  []string
	rules []*Rule
}

// Limits are the global limits of one configuration, ready for lookups.
type Limits struct {
	services map[string][]*group
	rules    []*Rule
}

// Compile builds the limits of a configuration.
func Compile(cfg *config.Config) *Limits {
	l := &Limits{services: map[string][]*group{}}
	if cfg == nil {
		return l
	}
	for _, ref := range cfg.RateLimits.Refs() {
		rl := cfg.RateLimits.For(ref)
		dest := ref.String()
		for _, g := range rl.Global {
			r := newRule(g, rl.OnError)
			l.rules = append(l.rules, r)
			var grp *group
			for _, c := range l.services[dest] {
				if equalKeys(c.keys, r.Keys) {
					grp = c
				}
			}
			if grp == nil {
				grp = &group{keys: r.Keys}
				l.services[dest] = append(l.services[dest], grp)
			}
			if r.Matched {
				grp.rules = append([]*Rule{r}, grp.rules...)
			} else {
				grp.rules = append(grp.rules, r)
			}
		}
	}
	return l
}

func newRule(g *config.GlobalLimit, onError config.OnError) *Rule {
	keys := g.DescriptorKeys()[1:]
	r := &Rule{ID: g.ID, Requests: g.Requests, Per: g.Per, Keys: keys, OnError: onError, Matched: g.Matched(), perNanos: int64(g.Per)}
	r.paths = make([]bool, len(keys))
	for i, k := range keys {
		r.paths[i] = k == KeyPath
	}
	unit, mult := rlsUnit(g.Per)
	r.limit = &rlsv3.RateLimitResponse_RateLimit{Name: g.ID, RequestsPerUnit: g.Requests, Unit: unit}
	if mult > 1 {
		r.limit.UnitMultiplier = wrapperspb.UInt32(mult)
	}
	n := strconv.FormatUint(uint64(g.Requests), 10)
	r.policy = n + ";w=" + strconv.FormatInt(int64(g.Per/time.Second), 10)
	r.header = n + ", " + r.policy
	return r
}

// rlsUnit expresses a period in RLS units.
func rlsUnit(d time.Duration) (rlsv3.RateLimitResponse_RateLimit_Unit, uint32) {
	switch {
	case d%(24*time.Hour) == 0:
		return rlsv3.RateLimitResponse_RateLimit_DAY, uint32(d / (24 * time.Hour))
	case d%time.Hour == 0:
		return rlsv3.RateLimitResponse_RateLimit_HOUR, uint32(d / time.Hour)
	case d%time.Minute == 0:
		return rlsv3.RateLimitResponse_RateLimit_MINUTE, uint32(d / time.Minute)
	}
	return rlsv3.RateLimitResponse_RateLimit_SECOND, uint32(d / time.Second)
}

func equalKeys(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Rules returns every limit, in configuration order.
func (l *Limits) Rules() []*Rule { return l.rules }

// lookup returns the group of a descriptor, or nil.
func (l *Limits) lookup(d *commonrl.RateLimitDescriptor) *group {
	es := d.GetEntries()
	if len(es) == 0 || es[0].GetKey() != KeyDestination {
		return nil
	}
	for _, g := range l.services[es[0].GetValue()] {
		if len(g.keys) != len(es)-1 {
			continue
		}
		ok := true
		for i, k := range g.keys {
			if es[i+1].GetKey() != k {
				ok = false
				break
			}
		}
		if ok {
			return g
		}
	}
	return nil
}

// resolve sets rules[i] to the limit descriptor i counts for (nil: none).
// Descriptors of one group are identical (their values come from one
// request); when fewer arrive than the group has limits, the limit with a
// match (first) did not apply, so the last ones take them.
func (l *Limits) resolve(descs []*commonrl.RateLimitDescriptor, groups []*group, rules []*Rule) {
	for i, d := range descs {
		groups[i] = l.lookup(d)
		rules[i] = nil
	}
	for i, g := range groups {
		if g == nil || seenBefore(groups[:i], g) {
			continue
		}
		c := 0
		for _, h := range groups[i:] {
			if h == g {
				c++
			}
		}
		j := len(g.rules) - c // the first limit that counts
		if j < 0 {
			j = 0
		}
		for k := i; k < len(groups) && j < len(g.rules); k++ {
			if groups[k] == g {
				rules[k] = g.rules[j]
				j++
			}
		}
	}
}

func seenBefore(groups []*group, g *group) bool {
	for _, h := range groups {
		if h == g {
			return true
		}
	}
	return false
}

// appendKey appends the counter key of descriptor d for rule r in window w:
// the rule's ID, the values after destination (paths without their query
// string), the window, separated by NUL bytes (which no header value, path
// or identity holds, so distinct values never share a key).
func (r *Rule) appendKey(b []byte, d *commonrl.RateLimitDescriptor, w int64) []byte {
	b = append(b, "brl:"...)
	b = append(b, r.ID...)
	for i, e := range d.GetEntries()[1:] {
		b = append(b, 0)
		v := e.GetValue()
		if r.paths[i] {
			if q := strings.IndexByte(v, '?'); q >= 0 {
				v = v[:q]
			}
		}
		b = append(b, v...)
	}
	b = append(b, 0)
	return strconv.AppendInt(b, w, 10)
}
