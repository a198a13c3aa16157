package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/bowlinemesh/bowline/config"
)

func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("validate", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: bowline validate DIR|FILE...")
		fmt.Fprintln(stderr, "Checks HCL configuration; exits 0 when valid, 1 with file:line:column diagnostics otherwise.")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitError{2}
	}
	var files []config.File
	for _, arg := range fs.Args() {
		st, err := os.Stat(arg)
		if err != nil {
			return err
		}
		if st.IsDir() {
			fl, err := config.ReadDir(arg)
			if err != nil {
				return err
			}
			files = append(files, fl...)
			continue
		}
		b, err := os.ReadFile(arg)
		if err != nil {
			return err
		}
		files = append(files, config.File{Name: filepath.Clean(arg), Content: b})
	}
	sources := map[string][]byte{}
	for _, f := range files {
		sources[f.Name] = f.Content
	}
	cfg, diags := config.Parse(files)
	if len(diags) > 0 {
		fmt.Fprint(stderr, config.FormatDiagnostics(diags, sources))
	}
	if diags.HasErrors() {
		return exitError{1}
	}
	fmt.Fprintf(stdout, "%d file(s) valid: %d service(s), trust domain %s\n", len(files), len(cfg.Services), cfg.Mesh.TrustDomain)
	return nil
}
