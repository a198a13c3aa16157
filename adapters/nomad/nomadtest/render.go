package nomadtest

import (
	"embed"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"
)

// fixtures are the captured responses (testdata/README.md).
//
//go:embed testdata/*.json testdata/*.ndjson testdata/*.headers testdata/*.hcl
var fixtures embed.FS

// Fixture returns a captured response by file name (for example
// "allocation-api.json"), for tests that decode Nomad's own documents.
func Fixture(name string) ([]byte, error) {
	return fixtures.ReadFile("testdata/" + name)
}

var (
	templateOnce sync.Once
	allocTmpl    map[string]any
	templateErr  error
)

// allocTemplate is the captured allocation, decoded anew on each call so
// that callers may change it.
func allocTemplate() map[string]any {
	templateOnce.Do(func() {
		b, err := Fixture("allocation-api.json")
		if err != nil {
			templateErr = err
			return
		}
		templateErr = json.Unmarshal(b, &allocTmpl)
	})
	if templateErr != nil {
		panic(fmt.Sprintf("nomadtest: allocation template: %v", templateErr))
	}
	return deepCopy(allocTmpl).(map[string]any)
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = deepCopy(e)
		}
		return s
	}
	return v
}

func obj(v any) map[string]any { m, _ := v.(map[string]any); return m }

func first(v any) map[string]any {
	if s, ok := v.([]any); ok && len(s) > 0 {
		return obj(s[0])
	}
	return nil
}

func orNull[M ~map[string]string](m M) any {
	if len(m) == 0 {
		return nil
	}
	return map[string]string(m)
}

// renderAlloc renders an allocation from the captured one (s.mu held), with
// its job spec unless withJob is false (Allocation events leave it out).
func (s *Server) renderAlloc(a *alloc, withJob bool) map[string]any {
	m := allocTemplate()
	spec := a.spec
	m["ID"] = a.id
	m["Name"] = a.name
	m["Namespace"] = spec.Namespace
	m["JobID"] = spec.ID
	m["TaskGroup"] = spec.Group
	m["NodeID"] = a.nodeID
	if n, ok := s.nodes[a.nodeID]; ok {
		m["NodeName"] = n.Name
	}
	m["CreateIndex"], m["ModifyIndex"], m["AllocModifyIndex"] = a.createIndex, a.modifyIndex, a.allocModifyIndex
	if a.running {
		m["ClientStatus"], m["DesiredStatus"], m["ClientDescription"] = "running", "run", "Tasks are running"
	} else {
		m["ClientStatus"], m["DesiredStatus"], m["ClientDescription"] = "complete", "stop", "All tasks have completed"
	}

	// Ports: AllocatedResources.Shared (Ports and Networks), and the
	// deprecated Resources and SharedResources networks.
	labels := slices.Sorted(maps.Keys(a.ports))
	var ports, dyn []any
	for _, l := range labels {
		ports = append(ports, map[string]any{"HostIP": a.address, "Label": l, "To": 0, "Value": a.ports[l]})
		dyn = append(dyn, map[string]any{"HostNetwork": "default", "Label": l, "To": 0, "Value": a.ports[l]})
	}
	shared := obj(obj(m["AllocatedResources"])["Shared"])
	shared["Ports"] = ports
	for _, holder := range []map[string]any{shared, obj(m["Resources"]), obj(m["SharedResources"])} {
		if n := first(holder["Networks"]); n != nil {
			n["DynamicPorts"], n["IP"] = dyn, a.address
		}
	}

	job := obj(m["Job"])
	if !withJob {
		m["Job"] = nil
		return m
	}
	job["ID"], job["Name"], job["Namespace"] = spec.ID, spec.ID, spec.Namespace
	job["Datacenters"] = []string{spec.Datacenter}
	job["Meta"] = orNull(spec.Meta)
	job["Version"] = a.version
	job["CreateIndex"] = a.job.createIndex
	job["ModifyIndex"], job["JobModifyIndex"] = a.job.modifyIndex, a.job.modifyIndex
	job["Status"] = "running"

	tg := first(job["TaskGroups"])
	tg["Name"] = spec.Group
	tg["Meta"] = orNull(spec.GroupMeta)
	var tmplDyn []any
	for _, l := range labels {
		tmplDyn = append(tmplDyn, map[string]any{"HostNetwork": "default", "Label": l, "To": 0, "Value": 0})
	}
	if n := first(tg["Networks"]); n != nil {
		n["DynamicPorts"] = tmplDyn
	}
	svcTmpl := first(tg["Services"])
	render := func(svc Service) map[string]any {
		out := deepCopy(svcTmpl).(map[string]any)
		out["Name"], out["PortLabel"], out["Namespace"], out["TaskName"] = svc.Name, svc.PortLabel, spec.Namespace, svc.Task
		out["Meta"] = orNull(svc.Meta)
		if len(svc.Tags) == 0 {
			out["Tags"] = nil
		} else {
			out["Tags"] = slices.Clone(svc.Tags)
		}
		return out
	}
	var groupSvcs []any
	taskSvcs := map[string][]any{}
	for _, svc := range spec.Services {
		if svc.Task == "" {
			groupSvcs = append(groupSvcs, render(svc))
		} else {
			taskSvcs[svc.Task] = append(taskSvcs[svc.Task], render(svc))
		}
	}
	tg["Services"] = groupSvcs
	taskTmpl := first(tg["Tasks"])
	tasks := []any{taskTmpl}
	taskTmpl["Services"] = nil
	for _, name := range slices.Sorted(maps.Keys(taskSvcs)) {
		t := deepCopy(taskTmpl).(map[string]any)
		t["Name"], t["Services"] = name, taskSvcs[name]
		tasks = append(tasks, t)
	}
	tg["Tasks"] = tasks
	return m
}

// render renders a node (not captured: the fields of Nomad's node API).
func (n Node) render() map[string]any {
	return map[string]any{
		"ID": n.ID, "Name": n.Name, "Datacenter": n.Datacenter, "NodeClass": "", "NodePool": "default",
		"HTTPAddr": "127.0.0.1:4646", "TLSEnabled": false, "Status": "ready", "StatusDescription": "",
		"SchedulingEligibility": "eligible", "Drain": false, "Meta": orNull(n.Meta), "Attributes": orNull(n.Attributes),
		"Links": nil, "CreateIndex": 1, "ModifyIndex": 1,
	}
}
