package config

import (
	"bufio"
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// docSnippet is one ```hcl code block of a document.
type docSnippet struct {
	line int // of the opening fence
	src  string
	skip bool // marked as not to be parsed
}

// noParseMarker, alone on the line before a ```hcl fence, marks a snippet
// that is deliberately partial or invalid. Keep such snippets rare: every
// other one is parsed by TestTrafficDocSnippets.
const noParseMarker = "<!-- hcl: not parsed -->"

// hclSnippets extracts the ```hcl code blocks of a Markdown document.
func hclSnippets(t *testing.T, doc []byte) []docSnippet {
	t.Helper()
	var (
		out  []docSnippet
		cur  *docSnippet
		body strings.Builder
		prev string
	)
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.TrimSpace(line) == "```hcl":
			cur = &docSnippet{line: n, skip: strings.TrimSpace(prev) == noParseMarker}
			body.Reset()
		case cur != nil && strings.TrimSpace(line) == "```":
			cur.src = body.String()
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(line)
			body.WriteByte('\n')
		}
		prev = line
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("the ```hcl block at line %d is not closed", cur.line)
	}
	return out
}

// ruleBlocks are the blocks (and attributes) of a route's rule: a snippet of
// only these is shown as the inside of a rule.
var ruleBlocks = map[string]bool{
	"match": true, "destination": true, "split": true, "redirect": true, "rewrite": true,
	"request_headers": true, "response_headers": true, "retries": true, "mirror": true, "fault": true,
	"timeout": true,
}

// docsContext declares what the snippets of docs/traffic.md refer to.
const docsContext = `
service "greeter" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 50051
    labels  = { version = "v1" }
  }
  endpoint {
    address = "127.0.0.1"
    port    = 50052
    labels  = { version = "v2" }
  }
}
service "greeter-next" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 50053
    labels  = { version = "v2" }
  }
}
service "payments" {
  protocol = "grpc"
  endpoint {
    address = "127.0.0.1"
    port    = 50061
  }
}
`

// docsFragmentSubsets are the subsets the snippets name, for those that do
// not declare subsets themselves.
const docsFragmentSubsets = `
subset "greeter" "v1" {
  labels = { version = "v1" }
}
subset "greeter" "v2" {
  labels = { version = "v2" }
}
subset "greeter-next" "v2" {
  labels = { version = "v2" }
}
`

// Every HCL example of the traffic reference is valid configuration (it may
// draw warnings). A snippet that is a rule is parsed inside route "greeter",
// and one made of the parts of a rule inside a rule of that route.
func TestTrafficDocSnippets(t *testing.T) {
	doc, err := os.ReadFile("../docs/traffic.md")
	if err != nil {
		t.Fatal(err)
	}
	snippets := hclSnippets(t, doc)
	if len(snippets) < 10 {
		t.Fatalf("found %d hcl snippets in docs/traffic.md; the extraction is broken", len(snippets))
	}
	var skipped []int
	for _, sn := range snippets {
		if sn.skip {
			skipped = append(skipped, sn.line)
			continue
		}
		f, diags := hclsyntax.ParseConfig([]byte(sn.src), "snippet.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Errorf("docs/traffic.md:%d: the snippet does not parse: %s\n%s", sn.line, diags.Error(), sn.src)
			continue
		}
		body := f.Body.(*hclsyntax.Body)
		rule, inRule, declaresSubsets := true, true, false
		for _, b := range body.Blocks {
			rule = rule && b.Type == "rule"
			inRule = inRule && ruleBlocks[b.Type]
			declaresSubsets = declaresSubsets || b.Type == "subset"
		}
		for name := range body.Attributes {
			rule = false
			inRule = inRule && ruleBlocks[name]
		}
		src := sn.src
		switch {
		case len(body.Blocks) == 0 && len(body.Attributes) == 0:
			t.Errorf("docs/traffic.md:%d: empty snippet", sn.line)
			continue
		case rule:
			src = "route \"greeter\" {\n" + src + "}\n"
		case inRule:
			src = "route \"greeter\" {\nrule {\n" + src + "}\n}\n"
		}
		files := []File{{Name: "context.hcl", Content: []byte(docsContext)}, {Name: "snippet.hcl", Content: []byte(src)}}
		if !declaresSubsets {
			files = append(files, File{Name: "subsets.hcl", Content: []byte(docsFragmentSubsets)})
		}
		if _, diags := Parse(files); diags.HasErrors() {
			t.Errorf("docs/traffic.md:%d: the snippet is not valid configuration: %s\n%s", sn.line, diags.Error(), src)
		}
	}
	// Deliberately partial snippets are skipped; keep them rare (today:
	// none): a reader copies the examples.
	if len(skipped) > 2 {
		t.Errorf("docs/traffic.md: %d snippets (lines %v) are marked %q; make most of them valid configuration", len(skipped), skipped, noParseMarker)
	} else if len(skipped) > 0 {
		t.Logf("docs/traffic.md: not parsed (marked %q): snippets at lines %v", noParseMarker, skipped)
	}
}
