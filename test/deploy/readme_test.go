package deploy_test

import (
	"os"
	"strings"
	"testing"
)

// TestREADMEMetricsAreRegistered: the README's metrics reference (the rows
// of its "Metrics (`/metrics`)" table) names only metrics the code registers,
// and every metric the code registers is named somewhere in the README (the
// table, or the sidecar's section for the sidecar's own), so an operator
// reading it can find every series /metrics shows.
func TestREADMEMetricsAreRegistered(t *testing.T) {
	b, err := os.ReadFile(root + "/README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	registered := registeredMetrics(t)

	_, table, ok := strings.Cut(readme, "\n### Metrics (`/metrics`)\n")
	if !ok {
		t.Fatal("README.md has no \"### Metrics (`/metrics`)\" section")
	}
	if i := strings.Index(table, "\n#"); i >= 0 {
		table = table[:i]
	}
	rows := 0
	for line := range strings.SplitSeq(table, "\n") {
		if !strings.HasPrefix(line, "| `credbroker_") {
			continue
		}
		rows++
		cell, _, _ := strings.Cut(line[2:], " | ")
		for _, name := range metricRE.FindAllString(cell, -1) {
			if !registered[name] {
				t.Errorf("README's metrics reference names %s, which the code does not register", name)
			}
		}
	}
	if rows < 10 {
		t.Fatalf("found only %d metric rows in the README's metrics reference; has its table format changed?", rows)
	}

	documented := map[string]bool{}
	for _, name := range metricRE.FindAllString(readme, -1) {
		documented[name] = true
	}
	for name := range registered {
		if !documented[name] {
			t.Errorf("the code registers %s, which README.md does not name", name)
		}
	}
}
