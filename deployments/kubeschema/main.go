// Command kubeschema writes strict JSON schemas for kubeconform from Kubernetes' OpenAPI v3 documents.
//
// The documents come from a Go module (k8s.io/client-go embeds those of the core, apps, batch and
// discovery groups as test data), fetched with `go mod download`, so no schema is downloaded from
// anywhere but the Go module proxy and none is committed. One file per kind, named as kubeconform's
// -schema-location template {{.ResourceKind}}{{.KindSuffix}}.json expects (deployment-apps-v1.json),
// holds the kind's schema and every schema it refers to; every object schema with properties
// refuses unknown fields, as kubeconform -strict does with its own schemas.
//
//	go run ./kubeschema -module k8s.io/client-go@v0.34.1 -dir openapi/openapitest/testdata -o DIR
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	module := flag.String("module", "k8s.io/client-go@v0.34.1", "Go module holding the OpenAPI v3 documents, at a pinned version")
	dir := flag.String("dir", "openapi/openapitest/testdata", "folder of the documents inside the module")
	out := flag.String("o", "", "output folder (replaced)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "kubeschema: -o is required")
		os.Exit(2)
	}
	if err := run(*module, *dir, *out); err != nil {
		fmt.Fprintln(os.Stderr, "kubeschema:", err)
		os.Exit(1)
	}
}

func run(module, dir, out string) error {
	cmd := exec.Command("go", "mod", "download", "-json", module)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	js, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("go mod download %s: %w\n%s", module, err, stderr.Bytes())
	}
	var dl struct{ Dir, Error string }
	if err := json.Unmarshal(js, &dl); err != nil {
		return fmt.Errorf("go mod download %s: %w", module, err)
	}
	if dl.Error != "" || dl.Dir == "" {
		return fmt.Errorf("go mod download %s: %s", module, dl.Error)
	}
	docs, err := filepath.Glob(filepath.Join(dl.Dir, dir, "*_openapi.json"))
	if err != nil || len(docs) == 0 {
		return fmt.Errorf("no OpenAPI documents in %s", filepath.Join(dl.Dir, dir))
	}
	schemas := map[string]any{}
	for _, d := range docs {
		data, err := os.ReadFile(d)
		if err != nil {
			return err
		}
		var doc struct {
			Components struct {
				Schemas map[string]any `json:"schemas"`
			} `json:"components"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
		for name, s := range doc.Components.Schemas {
			schemas[name] = strict(s)
		}
	}
	tmp := out + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	n := 0
	for name, s := range schemas {
		for _, gvk := range kinds(s) {
			file := filepath.Join(tmp, strings.ToLower(gvk.Kind)+suffix(gvk.Group, gvk.Version)+".json")
			reach := map[string]any{}
			if err := reachable(schemas, name, reach); err != nil {
				return err
			}
			doc := map[string]any{
				"allOf":      []any{map[string]any{"$ref": "#/components/schemas/" + name}},
				"components": map[string]any{"schemas": reach},
			}
			data, err := json.Marshal(doc)
			if err != nil {
				return err
			}
			if err := os.WriteFile(file, data, 0o644); err != nil {
				return err
			}
			n++
		}
	}
	if n == 0 {
		return errors.New("no kind found in the OpenAPI documents")
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		return err
	}
	fmt.Printf("kubeschema: %d schemas from %s in %s\n", n, module, out)
	return nil
}

type gvk struct{ Group, Version, Kind string }

// kinds lists the x-kubernetes-group-version-kind entries of a schema.
func kinds(s any) []gvk {
	m, _ := s.(map[string]any)
	list, _ := m["x-kubernetes-group-version-kind"].([]any)
	var out []gvk
	for _, e := range list {
		e, _ := e.(map[string]any)
		g, _ := e["group"].(string)
		v, _ := e["version"].(string)
		k, _ := e["kind"].(string)
		if v != "" && k != "" {
			out = append(out, gvk{g, v, k})
		}
	}
	return out
}

// suffix is kubeconform's KindSuffix: -v1 for the core group, -apps-v1 for apps/v1,
// -networking-v1 for networking.k8s.io/v1.
func suffix(group, version string) string {
	if group == "" {
		return "-" + strings.ToLower(version)
	}
	return "-" + strings.ToLower(strings.Split(group, ".")[0]) + "-" + strings.ToLower(version)
}

// strict drops descriptions (they are most of the size) and makes every object schema with
// properties refuse unknown fields, unless Kubernetes keeps unknown fields there.
func strict(s any) any {
	switch v := s.(type) {
	case map[string]any:
		delete(v, "description")
		for k, e := range v {
			if k == "properties" {
				props, _ := e.(map[string]any)
				for p, ps := range props {
					props[p] = strict(ps)
				}
				continue
			}
			v[k] = strict(e)
		}
		_, hasProps := v["properties"]
		_, hasAdditional := v["additionalProperties"]
		if keep, _ := v["x-kubernetes-preserve-unknown-fields"].(bool); hasProps && !hasAdditional && !keep {
			v["additionalProperties"] = false
		}
		return v
	case []any:
		for i, e := range v {
			v[i] = strict(e)
		}
		return v
	default:
		return s
	}
}

// reachable adds name and every schema it refers to, directly or not, to reach.
func reachable(schemas map[string]any, name string, reach map[string]any) error {
	if _, ok := reach[name]; ok {
		return nil
	}
	s, ok := schemas[name]
	if !ok {
		return fmt.Errorf("schema %s is referred to but not defined", name)
	}
	reach[name] = s
	var refs []string
	collectRefs(s, &refs)
	sort.Strings(refs)
	for _, r := range refs {
		if err := reachable(schemas, strings.TrimPrefix(r, "#/components/schemas/"), reach); err != nil {
			return err
		}
	}
	return nil
}

func collectRefs(s any, refs *[]string) {
	switch v := s.(type) {
	case map[string]any:
		for k, e := range v {
			if r, ok := e.(string); ok && k == "$ref" {
				*refs = append(*refs, r)
				continue
			}
			collectRefs(e, refs)
		}
	case []any:
		for _, e := range v {
			collectRefs(e, refs)
		}
	}
}
