package audit

import "testing"

// TestEveryDecisionHasALinkCode: a decision without its own one-byte code
// would be stored as 0 and could not be listed by decision.
func TestEveryDecisionHasALinkCode(t *testing.T) {
	seen := map[byte]Decision{}
	for _, d := range []Decision{DecisionIntent, DecisionIssued, DecisionDenied, DecisionThrottled, DecisionFailed, DecisionRevoked, DecisionLifted, DecisionReset,
		DecisionApprovalRequested, DecisionApprovalApproved, DecisionApprovalGranted, DecisionApprovalDenied, DecisionApprovalExpired,
		DecisionCheckpoint, DecisionExported, DecisionPending, DecisionKeyRotated} {
		if !d.Valid() {
			t.Errorf("%s is not Valid", d)
		}
		c := decisionCodes[d]
		if c == 0 {
			t.Errorf("%s has no link code", d)
		} else if other, dup := seen[c]; dup {
			t.Errorf("%s and %s share link code %d", d, other, c)
		}
		seen[c] = d
	}
	if len(decisionCodes) != len(seen) {
		t.Errorf("%d link codes for %d decisions", len(decisionCodes), len(seen))
	}
}
