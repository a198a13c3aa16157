package discovery

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"slices"
)

// Snapshot is an immutable view of the merged catalog. Never modify a
// snapshot or the services it holds.
type Snapshot struct {
	// Version is derived from the content: equal catalogs have equal versions
	// in every replica.
	Version string
	// Changed holds the services added, changed or removed since the previous
	// snapshot a subscriber received. Nil means "everything" (first snapshot).
	Changed map[ServiceKey]struct{}

	services []*Service
	byKey    map[ServiceKey]*Service
	hashes   map[ServiceKey][32]byte
}

// Services returns every service, ordered by namespace and name.
func (s *Snapshot) Services() []*Service {
	if s == nil {
		return nil
	}
	return s.services
}

// Service returns one service.
func (s *Snapshot) Service(k ServiceKey) (*Service, bool) {
	if s == nil {
		return nil, false
	}
	svc, ok := s.byKey[k]
	return svc, ok
}

// Len is the number of services.
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return len(s.services)
}

// Endpoints counts every endpoint of every service.
func (s *Snapshot) Endpoints() int {
	n := 0
	for _, svc := range s.Services() {
		n += len(svc.Endpoints)
	}
	return n
}

// ChangedKey reports whether k changed since the previous snapshot.
func (s *Snapshot) ChangedKey(k ServiceKey) bool {
	if s.Changed == nil {
		return true
	}
	_, ok := s.Changed[k]
	return ok
}

// ServiceHash returns a content hash of one service (zero when absent).
func (s *Snapshot) ServiceHash(k ServiceKey) [32]byte {
	if s == nil {
		return [32]byte{}
	}
	return s.hashes[k]
}

// NewSnapshot builds a snapshot from services (which it normalizes and then
// owns; a service of prev may be passed again, under its key, and is taken
// as it is). Changed is computed against prev (nil prev: everything changed).
func NewSnapshot(prev *Snapshot, services []*Service) *Snapshot {
	s := &Snapshot{byKey: make(map[ServiceKey]*Service, len(services)), hashes: make(map[ServiceKey][32]byte, len(services))}
	for _, svc := range services {
		if p, ok := prev.Service(svc.ServiceKey); !ok || p != svc {
			svc.Normalize()
		}
		s.byKey[svc.ServiceKey] = svc
	}
	s.services = s.sorted(prev)

	h := sha256.New()
	if prev != nil {
		s.Changed = make(map[ServiceKey]struct{})
	}
	for _, svc := range s.services {
		var sum, prevSum [32]byte
		p, ok := prev.Service(svc.ServiceKey)
		if ok {
			prevSum = prev.hashes[svc.ServiceKey]
		}
		if ok && (p == svc || p.Equal(svc)) {
			sum = prevSum
		} else {
			sum = hashService(svc)
		}
		s.hashes[svc.ServiceKey] = sum
		if prev != nil && (!ok || sum != prevSum) {
			s.Changed[svc.ServiceKey] = struct{}{}
		}
		h.Write(sum[:])
	}
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(s.services)))
	h.Write(n[:])
	s.Version = hex.EncodeToString(h.Sum(nil)[:8])

	if prev != nil {
		for k := range prev.byKey {
			if _, ok := s.byKey[k]; !ok {
				s.Changed[k] = struct{}{}
			}
		}
	}
	return s
}

// sorted lists the snapshot's services by key: in prev's order when they
// have prev's keys, as they usually do.
func (s *Snapshot) sorted(prev *Snapshot) []*Service {
	out := make([]*Service, 0, len(s.byKey))
	if prev != nil && len(prev.services) == len(s.byKey) {
		for _, p := range prev.services {
			svc, ok := s.byKey[p.ServiceKey]
			if !ok {
				break
			}
			out = append(out, svc)
		}
		if len(out) == len(s.byKey) {
			return out
		}
		out = out[:0]
	}
	for _, svc := range s.byKey {
		out = append(out, svc)
	}
	slices.SortFunc(out, func(a, b *Service) int { return a.ServiceKey.Compare(b.ServiceKey) })
	return out
}

func hashService(svc *Service) [32]byte {
	b, err := json.Marshal(svc) // maps marshal with sorted keys
	if err != nil {
		panic("discovery: marshal service: " + err.Error())
	}
	return sha256.Sum256(b)
}

// withChanged returns a shallow copy of s carrying another changed set.
func (s *Snapshot) withChanged(changed map[ServiceKey]struct{}) *Snapshot {
	c := *s
	c.Changed = changed
	return &c
}

// mergeChanged unions two changed sets; nil means everything.
func mergeChanged(a, b map[ServiceKey]struct{}) map[ServiceKey]struct{} {
	if a == nil || b == nil {
		return nil
	}
	out := make(map[ServiceKey]struct{}, len(a)+len(b))
	for k := range a {
		out[k] = struct{}{}
	}
	for k := range b {
		out[k] = struct{}{}
	}
	return out
}
