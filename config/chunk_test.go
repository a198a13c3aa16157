package config

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

func TestSplitChunks(t *testing.T) {
	tests := []struct {
		src  string
		want []string
	}{
		{"", nil},
		{"service \"a\" {\n}\n", []string{"service \"a\" {\n}\n"}},
		{"a {\n}\nb {\n}\n", []string{"a {\n}\n", "b {\n}\n"}},
		{"a {\n}\n# b\n\nb {\n}", []string{"a {\n}\n", "# b\n\nb {\n}"}},
		{"}\n}\n}", []string{"}\n", "}\n", "}"}},
		{"a {\r\n} \t\r\nb {\r\n}\r\n", []string{"a {\r\n} \t\r\n", "b {\r\n}\r\n"}},
		{"a {\n  }\n}x\n} # c\n}\n\nc\n", []string{"a {\n  }\n}x\n} # c\n}\n", "\nc\n"}},
	}
	for _, tt := range tests {
		var got []string
		for _, c := range splitChunks([]byte(tt.src)) {
			got = append(got, string(c.text))
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitChunks(%q) = %q, want %q", tt.src, got, tt.want)
		}
		checkChunks(t, []byte(tt.src))
	}
}

// checkChunks checks that the chunks of src make up src, each starting where
// it says.
func checkChunks(t *testing.T, src []byte) {
	t.Helper()
	var all []byte
	for _, c := range splitChunks(src) {
		want := hcl.Pos{Byte: len(all), Line: 1 + bytes.Count(all, []byte("\n")), Column: 1}
		if c.start != want {
			t.Fatalf("chunk %q of %q starts at %+v, want %+v", c.text, src, c.start, want)
		}
		all = append(all, c.text...)
	}
	if !bytes.Equal(all, src) {
		t.Fatalf("the chunks of %q make %q", src, all)
	}
}

// chunkSources are files to decode in chunks: every example and test file,
// a registry of many services, and files made to be cut in odd places.
func chunkSources(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, pattern := range []string{"testdata/*.hcl", "../examples/*/*.hcl", "../examples/*/*/*.hcl"} {
		paths, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			out[p] = string(b)
		}
	}
	var reg strings.Builder
	for k := range 12 {
		fmt.Fprintf(&reg, "# service %d\nservice \"svc-%d\" {\n  protocol = \"http\"\n  labels = { team = \"t%d\" }\n", k, k, k%3)
		for j := range 3 {
			fmt.Fprintf(&reg, "  endpoint {\n    address = \"10.0.%d.%d\"\n    port    = %d\n  }\n", k, j+1, 8080+j)
		}
		if k%7 == 0 {
			fmt.Fprintf(&reg, "  endpoint { address = \"10.1.0.%d\"  port = 9090 }\n  upstream \"svc-%d\" {\n    local_port = %d\n  }\n", k, (k+1)%12, 9000+k)
		}
		reg.WriteString("}\n")
		if k%10 == 3 {
			fmt.Fprintf(&reg, "\nservice_defaults \"svc-%d\" {\n  connect_timeout = \"2s\"\n}\n", k)
		}
	}
	out["registry.hcl"] = reg.String()
	out["odd.hcl"] = `mesh {
  trust_domain = "odd.example"
}
/* a comment holding what looks like blocks
}
service "commented" {
}
*/
service "heredoc" {
  labels = {
    note = <<EOT
}
service "inside" {
}
EOT
  }
  endpoint {
    address = "10.9.0.1"
    port    = 80
  }
}
service "a" {
  endpoint {
    address = "10.9.0.2"
    port    = 81
}
}
# trailing comment`
	return out
}

// mutate makes a random edit to src, of the kind that editing a
// configuration makes, or that breaks it where chunks are cut.
func mutate(r *rand.Rand, src string) string {
	lines := strings.SplitAfter(src, "\n")
	i := r.IntN(len(lines))
	snippets := []string{"}\n", "/*\n", "*/\n", "# c\n", "service \"x\" {\n", "  endpoint {\n", "EOT\n", "\n",
		"service \"new\" {\n  endpoint {\n    address = \"10.8.0.1\"\n    port    = 80\n  }\n}\n", "mesh {\n}\n", "}\nservice \"y\" {\n", "  x = <<EOT\n"}
	switch r.IntN(6) {
	case 0: // change a digit, as a port change does
		for range 20 {
			j := r.IntN(len(src))
			if src[j] >= '0' && src[j] <= '8' {
				return src[:j] + string(src[j]+1) + src[j+1:]
			}
		}
		return src
	case 1: // delete a line
		return strings.Join(append(lines[:i:i], lines[i+1:]...), "")
	case 2: // duplicate a line
		return strings.Join(append(lines[:i+1:i+1], lines[i:]...), "")
	case 3: // insert something
		return strings.Join(lines[:i], "") + snippets[r.IntN(len(snippets))] + strings.Join(lines[i:], "")
	case 4: // move a line
		j := r.IntN(len(lines))
		lines[i], lines[j] = lines[j], lines[i]
		return strings.Join(lines, "")
	default: // grow or shrink a line
		if r.IntN(2) == 0 {
			lines[i] = "  " + lines[i]
		} else {
			lines[i] = strings.TrimLeft(lines[i], " ")
		}
		return strings.Join(lines, "")
	}
}

// diagText renders diagnostics in order (hcl reports unexpected arguments in
// no particular order).
func diagText(diags hcl.Diagnostics) string {
	var lines []string
	for _, d := range diags {
		lines = append(lines, fmt.Sprintf("%v %s: %s (%v; %v)\n", d.Severity, d.Summary, d.Detail, d.Subject, d.Context))
	}
	slices.Sort(lines)
	return strings.Join(lines, "")
}

// Decoding a file in chunks, with the chunks of its previous versions at
// hand, gives exactly what decoding it whole gives: the same declarations at
// the same positions, and the same diagnostics.
func TestDecodeChunksMatchesWhole(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for name, src := range chunkSources(t) {
		t.Run(name, func(t *testing.T) {
			l := newLoader()
			chunked, whole := 0, 0
			steps := 30
			if name == "registry.hcl" {
				steps = 120
			}
			for step := range steps {
				checkChunks(t, []byte(src))
				f := File{Name: name, Content: []byte(src)}
				wantFrag, wantDiags := newLoader().decodeWhole(f)
				if _, ok := l.decodeChunks(f); ok {
					chunked++
				} else {
					whole++
				}
				gotFrag, gotDiags := l.decode(f)
				if diagText(gotDiags) != diagText(wantDiags) {
					t.Fatalf("step %d: diagnostics\n%s\nwant\n%s\nsource:\n%s", step, diagText(gotDiags), diagText(wantDiags), src)
				}
				if !reflect.DeepEqual(gotFrag, wantFrag) {
					t.Fatalf("step %d: decoding in chunks differs from decoding whole; source:\n%s", step, src)
				}
				src = mutate(r, src)
				if step%4 == 3 {
					src = chunkSources(t)[name] // back to a valid file
				}
			}
			t.Logf("%d versions decoded in chunks, %d whole", chunked, whole)
			if name == "registry.hcl" && chunked < 25 {
				t.Errorf("only %d versions of the registry were decoded in chunks", chunked)
			}
		})
	}
}

// A change to one service of a large file decodes that service alone: the
// other declarations are the very same, or moved copies after a change of
// length.
func TestDecodeChunksReusesUnchangedServices(t *testing.T) {
	src := chunkSources(t)["registry.hcl"]
	l := newLoader()
	f := File{Name: "registry.hcl", Content: []byte(src)}
	before, diags := l.decode(f)
	if len(diags) > 0 {
		t.Fatal(diags)
	}
	// Same length: every other service is the same declaration.
	f.Content = []byte(strings.Replace(src, "10.0.10.2\"\n    port    = 8081", "10.0.10.2\"\n    port    = 8091", 1))
	if string(f.Content) == src {
		t.Fatal("the edit changed nothing")
	}
	after, diags := l.decode(f)
	if len(diags) > 0 {
		t.Fatal(diags)
	}
	for i := range before.services {
		same := before.services[i] == after.services[i]
		if want := before.services[i].Name != "svc-10"; same != want {
			t.Errorf("service %s reused: %v, want %v", before.services[i].Name, same, want)
		}
	}
	// One more line: the services after it move.
	edited := strings.Replace(string(f.Content), "service \"svc-10\" {\n", "service \"svc-10\" {\n  # a new line\n", 1)
	if edited == string(f.Content) {
		t.Fatal("the edit changed nothing")
	}
	f.Content = []byte(edited)
	moved, diags := l.decode(f)
	if len(diags) > 0 {
		t.Fatal(diags)
	}
	want, _ := newLoader().decodeWhole(f)
	if !reflect.DeepEqual(moved, want) {
		t.Fatal("decoding in chunks differs from decoding whole")
	}
	for i := range after.services {
		if (after.services[i] == moved.services[i]) != (i < 10) {
			t.Errorf("service %s reused: %v", after.services[i].Name, after.services[i] == moved.services[i])
		}
	}
}

// joinFragments puts together every field of fragment.
func TestJoinFragmentsKnowsEveryField(t *testing.T) {
	if n := reflect.TypeFor[fragment]().NumField(); n != 13 {
		t.Errorf("fragment has %d fields: teach joinFragments (chunk.go) the new ones, then this test", n)
	}
}
