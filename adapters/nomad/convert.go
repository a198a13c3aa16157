package nomad

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/nomad/api"

	"github.com/bowlinemesh/bowline/discovery"
)

// Meta keys (and key=value tags) with a meaning to the adapter. The control
// keys may also be spelled with underscores (bowline_sidecar_port), which
// reads better in an HCL meta block.
const (
	keyProtocol    = "protocol"
	keySidecarPort = "bowline-sidecar-port"
	keyUpstreams   = "bowline-upstreams"
	// controlPrefix marks keys that steer the adapter and are not copied into
	// labels.
	controlPrefix = "bowline-"
	// labelTags holds an instance's plain (not key=value) tags.
	labelTags = "tags"
)

// Node meta key and attributes that give a node's zone, in order.
var zoneKeys = []struct {
	meta bool
	key  string
}{
	{meta: true, key: "zone"},
	{key: "platform.aws.placement.availability-zone"},
	{key: "platform.gce.zone"},
}

// registration is a native service registration, cut down from an
// api.ServiceRegistration.
type registration struct {
	ID          string
	Service     string
	Namespace   string
	Datacenter  string
	NodeID      string
	AllocID     string
	JobID       string
	Address     string
	Port        uint32
	Tags        []string
	ModifyIndex uint64
}

// key identifies the registration across namespaces.
func (r registration) key() string { return r.Namespace + "\x00" + r.ID }

// serviceKey is the discovery service the registration belongs to.
func (r registration) serviceKey() discovery.ServiceKey {
	return discovery.ServiceKey{Namespace: r.Namespace, Name: r.Service}
}

// convertRegistration cuts an API registration down to what the adapter
// keeps. It fails for a registration the model cannot hold.
func convertRegistration(r *api.ServiceRegistration) (registration, error) {
	if r == nil {
		return registration{}, fmt.Errorf("empty registration")
	}
	if r.ID == "" || r.ServiceName == "" {
		return registration{}, fmt.Errorf("registration %q of service %q: ID and service name are required", r.ID, r.ServiceName)
	}
	if r.Port <= 0 || r.Port > 65535 {
		return registration{}, fmt.Errorf("registration %s of service %s: %d is not a port", r.ID, r.ServiceName, r.Port)
	}
	if r.Address == "" {
		return registration{}, fmt.Errorf("registration %s of service %s has no address", r.ID, r.ServiceName)
	}
	return registration{
		ID:          r.ID,
		Service:     r.ServiceName,
		Namespace:   cmp.Or(r.Namespace, discovery.DefaultNamespace),
		Datacenter:  r.Datacenter,
		NodeID:      r.NodeID,
		AllocID:     r.AllocID,
		JobID:       r.JobID,
		Address:     r.Address,
		Port:        uint32(r.Port),
		Tags:        slices.Clone(r.Tags),
		ModifyIndex: r.ModifyIndex,
	}, nil
}

// serviceSpec is a service block of the allocation's job (group or task
// level), with its name and meta as written in the job.
type serviceSpec struct {
	Name      string
	PortLabel string
	Task      string
	Meta      map[string]string
}

// allocPort is one port allocated to an allocation.
type allocPort struct {
	Label string
	// Value is the host port; To the port inside the allocation's network
	// namespace (0 when it is the host port).
	Value, To int
}

// allocInfo is what the adapter keeps of an allocation: the service blocks of
// its task group and what their values may interpolate.
type allocInfo struct {
	ID               string
	Namespace        string
	JobID            string
	Group            string
	AllocModifyIndex uint64
	Services         []serviceSpec
	Ports            []allocPort
	// env holds the NOMAD_* variables the adapter can interpolate (ports,
	// names, job and group meta).
	env map[string]string
}

// convertAlloc extracts from an allocation the service blocks of its group
// (provider "nomad" only) and the values they may interpolate. An allocation
// without its job yields no services.
func convertAlloc(a *api.Allocation) *allocInfo {
	info := &allocInfo{
		ID:               a.ID,
		Namespace:        cmp.Or(a.Namespace, discovery.DefaultNamespace),
		JobID:            a.JobID,
		Group:            a.TaskGroup,
		AllocModifyIndex: a.AllocModifyIndex,
		env:              map[string]string{},
	}
	env := info.env
	env["NOMAD_ALLOC_ID"] = a.ID
	env["NOMAD_ALLOC_NAME"] = a.Name
	if i := strings.LastIndexByte(a.Name, '['); i >= 0 && strings.HasSuffix(a.Name, "]") {
		env["NOMAD_ALLOC_INDEX"] = a.Name[i+1 : len(a.Name)-1]
	}
	env["NOMAD_GROUP_NAME"] = a.TaskGroup
	env["NOMAD_NAMESPACE"] = info.Namespace
	env["NOMAD_JOB_ID"] = a.JobID

	info.Ports = allocPorts(a)
	for _, p := range info.Ports {
		host := strconv.Itoa(p.Value)
		inside := host
		if p.To > 0 {
			inside = strconv.Itoa(p.To)
		}
		env["NOMAD_HOST_PORT_"+p.Label] = host
		env["NOMAD_PORT_"+p.Label] = inside
		env["NOMAD_ALLOC_PORT_"+p.Label] = inside
	}

	job := a.Job
	if job == nil {
		return info
	}
	env["NOMAD_JOB_NAME"] = cmp.Or(deref(job.Name), a.JobID)
	env["NOMAD_REGION"] = deref(job.Region)
	if len(job.Datacenters) == 1 {
		env["NOMAD_DC"] = job.Datacenters[0]
	}
	var group *api.TaskGroup
	for _, tg := range job.TaskGroups {
		if tg != nil && deref(tg.Name) == a.TaskGroup {
			group = tg
			break
		}
	}
	setMeta := func(meta map[string]string) {
		for k, v := range meta {
			env["NOMAD_META_"+k] = v
			env["NOMAD_META_"+strings.ToUpper(k)] = v
		}
	}
	setMeta(job.Meta)
	if group == nil {
		return info
	}
	setMeta(group.Meta)
	add := func(task string, svcs []*api.Service) {
		for _, s := range svcs {
			if s == nil || (s.Provider != "" && s.Provider != "nomad") {
				continue
			}
			info.Services = append(info.Services, serviceSpec{
				Name: s.Name, PortLabel: s.PortLabel, Task: task, Meta: maps.Clone(s.Meta),
			})
		}
	}
	add("", group.Services)
	for _, t := range group.Tasks {
		if t != nil {
			add(t.Name, t.Services)
		}
	}
	return info
}

// allocPorts lists an allocation's ports: the group's shared ports, else the
// ports of its shared networks.
func allocPorts(a *api.Allocation) []allocPort {
	var out []allocPort
	if a.AllocatedResources == nil {
		return nil
	}
	sh := a.AllocatedResources.Shared
	for _, p := range sh.Ports {
		out = append(out, allocPort{Label: p.Label, Value: p.Value, To: p.To})
	}
	if len(out) > 0 {
		return out
	}
	for _, n := range sh.Networks {
		if n == nil {
			continue
		}
		for _, p := range slices.Concat(n.ReservedPorts, n.DynamicPorts) {
			out = append(out, allocPort{Label: p.Label, Value: p.Value, To: p.To})
		}
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// interpolate replaces the ${NOMAD_...} references the allocation
// determines (ports, names, job and group meta); other references stay as
// written.
func (a *allocInfo) interpolate(s string) string {
	if a == nil || !strings.Contains(s, "${") {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			b.WriteString(s)
			return b.String()
		}
		name := strings.TrimSpace(s[i+2 : i+j])
		b.WriteString(s[:i])
		if v, ok := a.env[name]; ok {
			b.WriteString(v)
		} else {
			b.WriteString(s[i : i+j+1])
		}
		s = s[i+j+1:]
	}
}

// spec finds the service block a registration came from: the block of that
// name (after interpolation) whose port is the registration's port, else the
// first block of that name.
func (a *allocInfo) spec(r registration) (serviceSpec, bool) {
	if a == nil {
		return serviceSpec{}, false
	}
	var found *serviceSpec
	for i := range a.Services {
		s := &a.Services[i]
		if a.interpolate(s.Name) != r.Service {
			continue
		}
		if found == nil {
			found = s
		}
		if p, ok := a.port(s.PortLabel); ok && (uint32(p.Value) == r.Port || uint32(p.To) == r.Port) {
			return *s, true
		}
	}
	if found == nil {
		return serviceSpec{}, false
	}
	return *found, true
}

// port looks a port up by label.
func (a *allocInfo) port(label string) (allocPort, bool) {
	for _, p := range a.Ports {
		if p.Label == label {
			return p, true
		}
	}
	return allocPort{}, false
}

// nodeInfo is what the adapter keeps of a Nomad client node.
type nodeInfo struct {
	Zone string
}

// convertNode reads a node's zone: its meta "zone", else the zone its cloud
// fingerprint found (AWS, GCE).
func convertNode(n *api.Node) nodeInfo {
	if n == nil {
		return nodeInfo{}
	}
	for _, k := range zoneKeys {
		src := n.Attributes
		if k.meta {
			src = n.Meta
		}
		if v := src[k.key]; v != "" {
			return nodeInfo{Zone: v}
		}
	}
	return nodeInfo{}
}

// convertOptions carries what the conversion needs besides the API objects.
type convertOptions struct {
	// TrustDomain of SPIFFE identities; empty leaves identities unset.
	TrustDomain string
}

// instance is one converted registration.
type instance struct {
	reg       registration
	endpoint  discovery.Endpoint
	protocol  discovery.Protocol
	upstreams []discovery.Upstream
}

// buildServices assembles the model from the registrations, the allocations
// they belong to (nil or missing: tags only) and the nodes they run on. It
// returns warnings for registrations it had to correct. The result shares
// nothing with its inputs and is deterministic.
func buildServices(regs []registration, allocs map[string]*allocInfo, nodes map[string]nodeInfo, o convertOptions) ([]*discovery.Service, []string) {
	var warns []string
	byKey := map[discovery.ServiceKey][]instance{}
	for _, r := range regs {
		in := convertInstance(r, allocs[r.AllocID], nodes[r.NodeID], o, func(format string, args ...any) {
			warns = append(warns, fmt.Sprintf("service %s/%s: registration %s: ", r.Namespace, r.Service, r.ID)+fmt.Sprintf(format, args...))
		})
		byKey[r.serviceKey()] = append(byKey[r.serviceKey()], in)
	}
	keys := slices.SortedFunc(maps.Keys(byKey), discovery.ServiceKey.Compare)
	out := make([]*discovery.Service, 0, len(keys))
	for _, k := range keys {
		ins := byKey[k]
		slices.SortFunc(ins, func(a, b instance) int { return strings.Compare(a.reg.ID, b.reg.ID) })
		svc := &discovery.Service{ServiceKey: k, Protocol: serviceProtocol(ins), Endpoints: make([]discovery.Endpoint, 0, len(ins))}
		for _, in := range ins {
			svc.Endpoints = append(svc.Endpoints, in.endpoint)
			svc.Upstreams = append(svc.Upstreams, in.upstreams...)
		}
		if counts := protocolCounts(ins); len(counts) > 1 {
			warns = append(warns, fmt.Sprintf("service %s: instances disagree on the protocol (%v); using %s", k, counts, svc.Protocol))
		}
		svc.Upstreams = dedupUpstreams(svc.Upstreams)
		out = append(out, svc)
	}
	return out, warns
}

// convertInstance converts one registration with the service block it came
// from.
func convertInstance(r registration, alloc *allocInfo, node nodeInfo, o convertOptions, warnf func(string, ...any)) instance {
	spec, _ := alloc.spec(r)
	// Tags first, then meta: meta wins.
	values := map[string]string{}
	var plain []string
	for _, t := range r.Tags {
		if k, v, ok := strings.Cut(t, "="); ok && k != "" {
			values[k] = v
		} else if t != "" {
			plain = append(plain, t)
		}
	}
	for k, v := range spec.Meta {
		values[k] = alloc.interpolate(v)
	}
	control := map[string]string{}
	labels := map[string]string{}
	for k, v := range values {
		if ck, ok := controlKey(k); ok {
			control[ck] = v
			continue
		}
		labels[k] = v
	}
	if len(plain) > 0 {
		slices.Sort(plain)
		labels[labelTags] = strings.Join(slices.Compact(plain), ",")
	}
	if len(labels) == 0 {
		labels = nil
	}
	in := instance{reg: r, protocol: discovery.ProtocolTCP}
	in.endpoint = discovery.Endpoint{
		Address:  r.Address,
		Port:     r.Port,
		Labels:   labels,
		Locality: discovery.Locality{Region: r.Datacenter, Zone: node.Zone},
		Health:   discovery.HealthHealthy,
	}
	if o.TrustDomain != "" {
		in.endpoint.Identity = discovery.ServiceIdentity(o.TrustDomain, r.Namespace, r.Service)
	}
	if v, ok := values[keyProtocol]; ok {
		p, err := discovery.ParseProtocol(v)
		if err != nil {
			warnf("%s: %v; using tcp", keyProtocol, err)
			p = discovery.ProtocolTCP
		}
		in.protocol = p
	}
	if v, ok := control[keySidecarPort]; ok {
		p, err := resolvePort(v, alloc)
		if err != nil {
			warnf("%s: %v; ignored", keySidecarPort, err)
		} else {
			in.endpoint.SidecarPort = p
		}
	}
	if v, ok := control[keyUpstreams]; ok {
		in.upstreams = parseUpstreams(v, r.Namespace, func(msg string) { warnf("%s: %s", keyUpstreams, msg) })
	}
	return in
}

// controlKey recognises the adapter's control keys, in either spelling, and
// returns their canonical form.
func controlKey(k string) (string, bool) {
	c := strings.ReplaceAll(k, "_", "-")
	if !strings.HasPrefix(c, controlPrefix) {
		return "", false
	}
	return c, true
}

// resolvePort reads a port number, or the label of one of the allocation's
// ports (its host port).
func resolvePort(v string, alloc *allocInfo) (uint32, error) {
	v = strings.TrimSpace(v)
	if p, err := parsePort(v); err == nil {
		return p, nil
	}
	if alloc != nil {
		if p, ok := alloc.port(v); ok && p.Value > 0 && p.Value <= 65535 {
			return uint32(p.Value), nil
		}
	}
	return 0, fmt.Errorf("%q is neither a port number nor the label of one of the allocation's ports", v)
}

// serviceProtocol picks the protocol most instances declare (ties go to the
// name that sorts first).
func serviceProtocol(ins []instance) discovery.Protocol {
	counts := protocolCounts(ins)
	best, n := discovery.ProtocolTCP, 0
	for _, p := range slices.Sorted(maps.Keys(counts)) {
		if counts[p] > n {
			best, n = p, counts[p]
		}
	}
	return best
}

func protocolCounts(ins []instance) map[discovery.Protocol]int {
	counts := map[discovery.Protocol]int{}
	for _, in := range ins {
		counts[in.protocol]++
	}
	return counts
}

// parseUpstreams reads "name:port,namespace/name:port"; malformed items are
// reported through warn and skipped.
func parseUpstreams(s, ns string, warn func(string)) []discovery.Upstream {
	var out []discovery.Upstream
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, port, ok := strings.Cut(item, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") {
			warn(fmt.Sprintf("%q is not name:port or namespace/name:port; skipped", item))
			continue
		}
		p, err := parsePort(port)
		if err != nil {
			warn(fmt.Sprintf("%q: %v; skipped", item, err))
			continue
		}
		out = append(out, discovery.Upstream{Service: discovery.ParseServiceKey(name, ns), LocalPort: p})
	}
	return out
}

// parsePort reads a TCP port number (1-65535).
func parsePort(s string) (uint32, error) {
	p, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("%q is not a port number", s)
	}
	return uint32(p), nil
}

// dedupUpstreams sorts upstreams and drops duplicates.
func dedupUpstreams(us []discovery.Upstream) []discovery.Upstream {
	if len(us) == 0 {
		return nil
	}
	slices.SortFunc(us, func(a, b discovery.Upstream) int {
		return cmp.Or(a.Service.Compare(b.Service), cmp.Compare(a.LocalPort, b.LocalPort))
	})
	return slices.Compact(us)
}
