package broker

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/limits"
	"github.com/credbroker/credbroker/test/fakeclock"
)

type memLog struct{ recs []audit.Record }

func (m *memLog) Append(r audit.Record) (audit.Record, error) {
	m.recs = append(m.recs, r)
	return r, nil
}

// TestRefusalTableFullOfOwedSummariesOverflows: keys that owe a summary are
// never dropped; once the table is full of them, new keys share the
// overflow entry, whose summary says so, and nothing goes uncounted.
func TestRefusalTableFullOfOwedSummariesOverflows(t *testing.T) {
	clock := fakeclock.New(time.Unix(1000, 0))
	log := &memLog{}
	one := RecordingLimits{PerKey: limits.Spec{Rate: 1, Burst: 1}, Total: limits.Spec{Rate: 1000, Burst: 1000}}
	r, err := NewRefusals(log, NewMetrics(prometheus.NewRegistry()), RefusalLimits{ByIdentity: one, ByAddress: one}, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	const tracked, extra, each = 5, 7, 3
	r.classes[byAddress].maxKeys, r.classes[byAddress].sweepAt = tracked, 0
	for i := 0; i < tracked+extra; i++ {
		for j := 0; j < each; j++ {
			if _, err := r.record(t.Context(), byAddress, fmt.Sprint("10.0.0.", i), audit.Record{Reason: "refused"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(r.classes[byAddress].keys); n != tracked+1 {
		t.Fatalf("%d keys tracked, want %d and the overflow", n, tracked)
	}
	clock.Advance(time.Minute)
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`\((\d+) earlier refusals`)
	total, overflow := 0, false
	for _, rec := range log.recs {
		total++
		for _, m := range re.FindAllStringSubmatch(rec.Reason, -1) {
			n, _ := strconv.Atoi(m[1])
			total += n
		}
		overflow = overflow || strings.Contains(rec.Reason, "addresses beyond the table")
	}
	if total != (tracked+extra)*each || !overflow {
		t.Fatalf("records account for %d refusals (overflow summary: %v), want %d", total, overflow, (tracked+extra)*each)
	}
}
