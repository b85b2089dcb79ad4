package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The README's configuration reference is what operators read; these tests
// keep it and the Config structs in step. They read only the key column of
// the table's rows (and, for keys a row explains together, the backticked
// names in its text), so rewording the prose never breaks them.

// keyTree is the tree of keys the loader accepts: a map level is "*", a list
// level "[]".
type keyTree struct {
	children map[string]*keyTree
	leaf     bool
}

func configKeys(t reflect.Type) *keyTree {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	n := &keyTree{children: map[string]*keyTree{}}
	switch {
	case t.Kind() == reflect.Struct && t.PkgPath() != "time":
		addFields(n, t)
	case t.Kind() == reflect.Map && isStructLike(t.Elem()):
		n.children["*"] = configKeys(t.Elem())
	case t.Kind() == reflect.Slice && isStructLike(t.Elem()):
		n.children["[]"] = configKeys(t.Elem())
	default:
		n.leaf = true
	}
	return n
}

func addFields(n *keyTree, t reflect.Type) {
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			addFields(n, ft)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		n.children[name] = configKeys(f.Type)
	}
}

func isStructLike(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Kind() == reflect.Struct || t.Kind() == reflect.Map || t.Kind() == reflect.Slice
}

// readmeRow is one row of the configuration reference: the keys its first
// cell names, and its text.
type readmeRow struct {
	keys []string
	text string
}

var backticked = regexp.MustCompile("`([^`]+)`")

func readmeConfigRows(t *testing.T) []readmeRow {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Configuration reference\n")
	if !ok {
		t.Fatal("README.md has no \"## Configuration reference\" section")
	}
	if i := strings.Index(section, "\n#"); i >= 0 {
		section = section[:i]
	}
	var rows []readmeRow
	for line := range strings.SplitSeq(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cell, text, _ := strings.Cut(line[2:], " | ")
		var keys []string
		for _, m := range backticked.FindAllStringSubmatch(cell, -1) {
			keys = append(keys, m[1])
		}
		rows = append(rows, readmeRow{keys: expandKeys(keys), text: text})
	}
	if len(rows) < 50 {
		t.Fatalf("found only %d rows in the README's configuration reference; has its table format changed?", len(rows))
	}
	return rows
}

// expandKeys turns a key cell's names into full keys: `a.b.c`, `.d` is a.b.c
// and a.b.d; `a.b.c.d`, `e.…` is a.b.c.d and a.b.e.d.
func expandKeys(names []string) []string {
	if len(names) == 0 {
		return nil
	}
	first := names[0]
	keys := []string{first}
	segs := strings.Split(first, ".")
	for _, n := range names[1:] {
		switch {
		case strings.HasPrefix(n, "."):
			keys = append(keys, strings.Join(segs[:len(segs)-1], ".")+n)
		case strings.HasSuffix(n, ".…") && len(segs) >= 2:
			keys = append(keys, strings.Join(segs[:len(segs)-2], ".")+"."+strings.TrimSuffix(n, "…")+segs[len(segs)-1])
		default:
			keys = append(keys, n)
		}
	}
	return keys
}

var placeholder = regexp.MustCompile(`^[A-Z][A-Z/]*$`)

// resolveREADMEKey returns the normalized config paths a README key names: NAME, ID,
// NS/NAME... stand for a map key, RULE-like placeholders on a struct for each
// of its fields, and "[]" for a list element.
func resolveREADMEKey(root *keyTree, key string) []string {
	key = strings.ReplaceAll(key, "[]", ".[]")
	var walk func(n *keyTree, segs []string, path string) []string
	walk = func(n *keyTree, segs []string, path string) []string {
		if len(segs) == 0 {
			return []string{path}
		}
		s, rest := segs[0], segs[1:]
		join := func(p, s string) string {
			if p == "" {
				return s
			}
			return p + "." + s
		}
		if c := n.children["*"]; c != nil && placeholder.MatchString(s) {
			return walk(c, rest, join(path, "*"))
		}
		if placeholder.MatchString(s) {
			var out []string
			for name, c := range n.children {
				out = append(out, walk(c, rest, join(path, name))...)
			}
			return out
		}
		if c := n.children[s]; c != nil {
			return walk(c, rest, join(path, s))
		}
		return nil
	}
	return walk(root, strings.Split(key, "."), "")
}

func leaves(n *keyTree, path string, out *[]string) {
	if n.leaf {
		*out = append(*out, path)
		return
	}
	for name, c := range n.children {
		p := name
		if path != "" {
			p = path + "." + name
		}
		leaves(c, p, out)
	}
}

// TestREADMEConfigKeysExist: every key the configuration reference names is
// one the loader accepts.
func TestREADMEConfigKeysExist(t *testing.T) {
	root := configKeys(reflect.TypeFor[Config]())
	for _, r := range readmeConfigRows(t) {
		for _, k := range r.keys {
			if len(resolveREADMEKey(root, k)) == 0 {
				t.Errorf("README configuration reference names %q, which the config loader does not accept", k)
			}
		}
	}
}

// TestREADMEConfigKeysDocumented: every key the loader accepts has a row in
// the configuration reference: its own, its parent's or grandparent's (a row
// such as limits.requests.issue `{rate: 100, burst: 500}` documents the
// block), or a sibling's that names it in backticks (as
// issuers.NAME.vault.auth.method names role, mount, ...).
func TestREADMEConfigKeysDocumented(t *testing.T) {
	root := configKeys(reflect.TypeFor[Config]())
	documented := map[string]bool{}
	mentioned := map[string]bool{} // parent path + "." + backticked name in a row's text
	for _, r := range readmeConfigRows(t) {
		for _, k := range r.keys {
			for _, p := range resolveREADMEKey(root, k) {
				documented[p] = true
				parent := ""
				if i := strings.LastIndex(p, "."); i >= 0 {
					parent = p[:i+1]
				}
				for _, m := range backticked.FindAllStringSubmatch(r.text, -1) {
					mentioned[parent+m[1]] = true
				}
			}
		}
	}
	var all []string
	leaves(root, "", &all)
	for _, l := range all {
		covered := documented[l] || mentioned[l]
		p := l
		for range 2 {
			i := strings.LastIndex(p, ".")
			if i < 0 {
				break
			}
			p = p[:i]
			covered = covered || documented[p] || documented[strings.TrimSuffix(p, ".[]")]
		}
		if !covered {
			t.Errorf("config key %s has no row in the README's configuration reference", l)
		}
	}
}
