package daemon

import (
	"time"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/broker/config"
)

// auditPurges are the housekeeping of the audit log: with a retention, the
// records older than it are pruned behind checkpoint records (a batch per
// transaction, so appends wait for one batch at most), only as far as an
// admin has marked exported when require_export is set, and never a record
// of a credential still valid.
func auditPurges(c config.Audit, l *audit.Log) []purge {
	if c.Retention == 0 {
		return nil
	}
	return []purge{{"audit records past retention", func(now time.Time) (int, error) {
		res, err := l.Prune(audit.PruneOptions{Before: now.Add(-c.Retention), Now: now, RequireExport: c.RequireExport})
		return int(res.Pruned), err
	}}}
}
