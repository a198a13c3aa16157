package nomadtest

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
)

// Job is a service job with one task group. Its services use Nomad's native
// service discovery (provider = "nomad").
type Job struct {
	ID string
	// Namespace defaults to "default", Datacenter to "dc1", Group to ID.
	Namespace  string
	Datacenter string
	Group      string
	// Meta is the job's meta block; GroupMeta the group's.
	Meta, GroupMeta map[string]string
	Services        []Service
}

// Service is a service block.
type Service struct {
	Name      string
	PortLabel string
	Tags      []string
	Meta      map[string]string
	// Task is the task whose service block this is; empty for the group's.
	Task string
}

// Node is a Nomad client node.
type Node struct {
	ID, Name, Datacenter string
	Meta, Attributes     map[string]string
}

// DefaultNode is the node allocations are placed on unless told otherwise:
// the node of the captured responses.
var DefaultNode = Node{ID: "8683cdd5-2884-e08c-4591-ae60477204ae", Name: "vm", Datacenter: "dc1"}

// job is a submitted job and its versions.
type job struct {
	spec        Job
	version     int
	createIndex uint64
	modifyIndex uint64
	nextIndex   int // the next allocation index (api.api[N])
}

// alloc is an allocation of a job.
type alloc struct {
	id, name, nodeID, address string
	job                       *job
	spec                      Job // the job version the allocation runs
	version                   int
	ports                     map[string]int
	running                   bool
	createIndex, modifyIndex  uint64
	allocModifyIndex          uint64
}

// registration is a native service registration, with the fields of
// Nomad's (service-web.json).
type registration struct {
	ID          string
	ServiceName string
	Namespace   string
	NodeID      string
	Datacenter  string
	JobID       string
	AllocID     string
	Tags        []string
	Address     string
	Port        int
	CreateIndex uint64
	ModifyIndex uint64
}

func (r *registration) render() map[string]any {
	tags := r.Tags
	if tags == nil {
		tags = []string{}
	}
	return map[string]any{
		"Address": r.Address, "AllocID": r.AllocID, "CreateIndex": r.CreateIndex, "Datacenter": r.Datacenter,
		"ID": r.ID, "JobID": r.JobID, "ModifyIndex": r.ModifyIndex, "Namespace": r.Namespace,
		"NodeID": r.NodeID, "Port": r.Port, "ServiceName": r.ServiceName, "Tags": slices.Clone(tags),
	}
}

func (r *registration) equal(o *registration) bool {
	return r.ID == o.ID && r.ServiceName == o.ServiceName && r.Namespace == o.Namespace && r.NodeID == o.NodeID &&
		r.Datacenter == o.Datacenter && r.JobID == o.JobID && r.AllocID == o.AllocID &&
		slices.Equal(r.Tags, o.Tags) && r.Address == o.Address && r.Port == o.Port
}

func (j Job) withDefaults() Job {
	j.Namespace = cmp.Or(j.Namespace, "default")
	j.Datacenter = cmp.Or(j.Datacenter, "dc1")
	j.Group = cmp.Or(j.Group, j.ID)
	j.Meta = maps.Clone(j.Meta)
	j.GroupMeta = maps.Clone(j.GroupMeta)
	j.Services = slices.Clone(j.Services)
	for i := range j.Services {
		j.Services[i].Tags = slices.Clone(j.Services[i].Tags)
		j.Services[i].Meta = maps.Clone(j.Services[i].Meta)
	}
	return j
}

func jobKey(ns, id string) string { return ns + "/" + id }

// AddNode adds (or replaces) a client node.
func (s *Server) AddNode(n Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes[n.ID] = n
}

// SubmitJob registers a job, or a new version of it. Nomad applies a change
// to service blocks in place: the running allocations get the new version
// (their AllocModifyIndex moves, with an Allocation event), and their
// services are registered again only where a registration itself changes
// (tags, names, ports): new meta alone produces no Service event.
func (s *Server) SubmitJob(spec Job) {
	s.mu.Lock()
	defer s.mu.Unlock()
	spec = spec.withDefaults()
	key := jobKey(spec.Namespace, spec.ID)
	idx := s.nextIndexLocked()
	j, ok := s.jobs[key]
	if !ok {
		s.jobs[key] = &job{spec: spec, createIndex: idx, modifyIndex: idx}
		return
	}
	j.spec, j.version, j.modifyIndex = spec, j.version+1, idx
	var allocEvents []streamEvent
	var updated []*alloc
	for _, id := range slices.Sorted(maps.Keys(s.allocs)) {
		a := s.allocs[id]
		if a.job != j || !a.running {
			continue
		}
		a.spec, a.version = spec, j.version
		a.modifyIndex, a.allocModifyIndex = idx, idx
		allocEvents = append(allocEvents, s.allocEventLocked(a, "PlanResult"))
		updated = append(updated, a)
	}
	if len(allocEvents) > 0 {
		s.publishLocked(idx, allocEvents)
	}
	if len(updated) == 0 {
		return
	}
	ridx := s.nextIndexLocked()
	var events []streamEvent
	for _, a := range updated {
		want := s.registrationsFor(a, ridx)
		for _, id := range slices.Sorted(maps.Keys(s.regs)) {
			r := s.regs[id]
			if r.AllocID != a.id {
				continue
			}
			if _, keep := want[id]; !keep {
				r.ModifyIndex = ridx
				delete(s.regs, id)
				events = append(events, serviceEvent(r, "ServiceDeregistration", ridx))
			}
		}
		for _, id := range slices.Sorted(maps.Keys(want)) {
			r := want[id]
			if old, ok := s.regs[id]; ok {
				if old.equal(r) {
					continue
				}
				r.CreateIndex = old.CreateIndex
			}
			s.regs[id] = r
			events = append(events, serviceEvent(r, "ServiceRegistration", ridx))
		}
	}
	if len(events) > 0 {
		s.svcIndex = ridx
		s.publishLocked(ridx, events)
		s.bumpLocked()
	}
}

// AllocOption adjusts a placement.
type AllocOption func(*alloc)

// OnNode places the allocation on a node (added with AddNode).
func OnNode(nodeID string) AllocOption { return func(a *alloc) { a.nodeID = nodeID } }

// WithAddress sets the host address the allocation's services register
// (default 127.0.0.1).
func WithAddress(addr string) AllocOption { return func(a *alloc) { a.address = addr } }

// StartAlloc places an allocation of a submitted job with the given host
// ports (by label) and registers its services, as a Nomad client does once
// the allocation runs: the allocation at one index, its registrations at the
// next, in one frame of events. It returns the allocation's ID.
func (s *Server) StartAlloc(namespace, jobID string, ports map[string]int, opts ...AllocOption) string {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[jobKey(cmp.Or(namespace, "default"), jobID)]
	if !ok {
		s.t.Fatalf("nomadtest: StartAlloc: job %s/%s was not submitted", namespace, jobID)
	}
	s.nextID++
	a := &alloc{
		id:      fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", 0xa110c000+s.nextID, s.nextID, 0x4000, 0x8000, s.nextID*7919),
		name:    fmt.Sprintf("%s.%s[%d]", j.spec.ID, j.spec.Group, j.nextIndex),
		nodeID:  DefaultNode.ID,
		address: "127.0.0.1",
		job:     j, spec: j.spec, version: j.version,
		ports: maps.Clone(ports), running: true,
	}
	j.nextIndex++
	for _, o := range opts {
		o(a)
	}
	idx := s.nextIndexLocked()
	a.createIndex, a.modifyIndex, a.allocModifyIndex = idx, idx, idx
	s.allocs[a.id] = a
	s.publishLocked(idx, []streamEvent{s.allocEventLocked(a, "PlanResult")})

	ridx := s.nextIndexLocked()
	var events []streamEvent
	want := s.registrationsFor(a, ridx)
	for _, id := range slices.Sorted(maps.Keys(want)) {
		s.regs[id] = want[id]
		events = append(events, serviceEvent(want[id], "ServiceRegistration", ridx))
	}
	if len(events) > 0 {
		s.svcIndex = ridx
		s.publishLocked(ridx, events)
		s.bumpLocked()
	}
	return a.id
}

// StopAlloc stops an allocation: its services are deregistered (one frame
// of events), then the allocation completes.
func (s *Server) StopAlloc(id string) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.allocs[id]
	if !ok {
		s.t.Fatalf("nomadtest: StopAlloc: no allocation %s", id)
	}
	s.stopAllocLocked(a)
}

func (s *Server) stopAllocLocked(a *alloc) {
	if !a.running {
		return
	}
	ridx := s.nextIndexLocked()
	var events []streamEvent
	for _, rid := range slices.Sorted(maps.Keys(s.regs)) {
		if r := s.regs[rid]; r.AllocID == a.id {
			delete(s.regs, rid)
			events = append(events, serviceEvent(r, "ServiceDeregistration", ridx))
		}
	}
	if len(events) > 0 {
		s.svcIndex = ridx
		s.publishLocked(ridx, events)
		s.bumpLocked()
	}
	idx := s.nextIndexLocked()
	a.running = false
	a.modifyIndex = idx
	s.publishLocked(idx, []streamEvent{s.allocEventLocked(a, "AllocationUpdated")})
}

// StopJob stops every allocation of a job.
func (s *Server) StopJob(namespace, jobID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[jobKey(cmp.Or(namespace, "default"), jobID)]
	for _, id := range slices.Sorted(maps.Keys(s.allocs)) {
		if a := s.allocs[id]; a.job == j {
			s.stopAllocLocked(a)
		}
	}
}

// ForgetAlloc garbage-collects a stopped allocation: reading it answers 404.
func (s *Server) ForgetAlloc(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.allocs, id)
}

// Instance is one registered instance of a service.
type Instance struct {
	ID, AllocID, Address string
	Port                 int
	Tags                 []string
}

// Instances lists the registrations of a service, by ID.
func (s *Server) Instances(namespace, service string) []Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Instance
	for _, id := range slices.Sorted(maps.Keys(s.regs)) {
		r := s.regs[id]
		if r.Namespace == cmp.Or(namespace, "default") && r.ServiceName == service {
			out = append(out, Instance{ID: r.ID, AllocID: r.AllocID, Address: r.Address, Port: r.Port, Tags: slices.Clone(r.Tags)})
		}
	}
	return out
}

func (s *Server) nextIndexLocked() uint64 {
	s.index++
	return s.index
}

// registrationsFor returns the registrations an allocation's services make,
// by ID (the format Nomad uses: _nomad-task-<alloc>-group-<group>-<service>-
// <port label>, or -<task>- for a task's service).
func (s *Server) registrationsFor(a *alloc, index uint64) map[string]*registration {
	out := map[string]*registration{}
	for _, svc := range a.spec.Services {
		port := a.ports[svc.PortLabel]
		if port == 0 {
			s.t.Errorf("nomadtest: allocation %s has no port %q for service %s", a.id, svc.PortLabel, svc.Name)
			continue
		}
		scope := "group-" + a.spec.Group
		if svc.Task != "" {
			scope = svc.Task
		}
		id := fmt.Sprintf("_nomad-task-%s-%s-%s-%s", a.id, scope, svc.Name, svc.PortLabel)
		dc := a.spec.Datacenter
		if n, ok := s.nodes[a.nodeID]; ok && n.Datacenter != "" {
			dc = n.Datacenter
		}
		out[id] = &registration{
			ID: id, ServiceName: svc.Name, Namespace: a.spec.Namespace, NodeID: a.nodeID, Datacenter: dc,
			JobID: a.spec.ID, AllocID: a.id, Tags: slices.Clone(svc.Tags), Address: a.address, Port: port,
			CreateIndex: index, ModifyIndex: index,
		}
	}
	return out
}

// serviceEvent is a Service event, as in events.ndjson.
func serviceEvent(r *registration, typ string, index uint64) streamEvent {
	return streamEvent{
		topic: "Service", namespace: r.Namespace, key: r.ID, filterKeys: []string{r.JobID, r.ServiceName},
		body: map[string]any{
			"FilterKeys": []string{r.JobID, r.ServiceName}, "Index": index, "Key": r.ID, "Namespace": r.Namespace,
			"Payload": map[string]any{"Service": r.render()}, "Topic": "Service", "Type": typ,
		},
	}
}

// allocEventLocked is an Allocation event; Nomad leaves the job out of its
// payload.
func (s *Server) allocEventLocked(a *alloc, typ string) streamEvent {
	body := s.renderAlloc(a, false)
	deployment, _ := body["DeploymentID"].(string)
	return streamEvent{
		topic: "Allocation", namespace: a.spec.Namespace, key: a.id, filterKeys: []string{a.spec.ID, deployment},
		body: map[string]any{
			"FilterKeys": []string{a.spec.ID, deployment}, "Index": a.modifyIndex, "Key": a.id, "Namespace": a.spec.Namespace,
			"Payload": map[string]any{"Allocation": body}, "Topic": "Allocation", "Type": typ,
		},
	}
}
