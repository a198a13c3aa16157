package registrytest

import (
	"strings"
	"testing"
)

// A change edits what it means to: after some, the content is the services
// rendered anew at their generations, and earlier contents are left as they
// were.
func TestChange(t *testing.T) {
	const services, endpoints = 1000, 10
	for _, perService := range []bool{false, true} {
		r := New("/cfg", perService, services, endpoints)
		old := r.File(7)
		before := string(old.Content)
		for range 3 {
			r.Change(7)
		}
		if _, port := r.Change(999); port != MarkerBase+2 {
			t.Errorf("perService=%v: the marker port after one change is %d", perService, port)
		}
		if string(old.Content) != before {
			t.Errorf("perService=%v: a change modified content handed out before", perService)
		}
		var got, want string
		if perService {
			got = string(r.File(7).Content) + string(r.File(999).Content)
			want = ServiceHCL(7, endpoints, 4) + ServiceHCL(999, endpoints, 2)
		} else {
			got = string(r.File(0).Content)
			var b strings.Builder
			for k := range services {
				gen := 1
				switch k {
				case 7:
					gen = 4
				case 999:
					gen = 2
				}
				b.WriteString(ServiceHCL(k, endpoints, gen))
			}
			want = b.String()
		}
		if got != want {
			t.Errorf("perService=%v: the content after the changes is not the services rendered anew", perService)
		}
	}
}
