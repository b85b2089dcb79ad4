package crash

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	jwtlib "github.com/golang-jwt/jwt/v5"

	"github.com/credbroker/credbroker/broker/audit"
	"github.com/credbroker/credbroker/issuers/jwt"
	"github.com/credbroker/credbroker/test/miniotest"
)

// checkAudit checks, through the admin API of the last (live) broker, what
// the run promised: the chain verifies, every credential a client received
// has its durable issued record, and the quotas were never over-spent.
func checkAudit(t *testing.T, dataDir string, last *life, got []received) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	if out, err := ctl(ctx, dataDir, "audit", "verify"); err != nil {
		t.Errorf("audit verify after %d kills: %v", kills, err)
	} else {
		t.Logf("%s", bytes.TrimSpace(out))
	}
	export, err := ctl(ctx, dataDir, "audit", "export")
	if err != nil {
		t.Fatalf("audit export: %v", err)
	}
	recs := verifyExport(t, export)

	byIssuance := make(map[string][]audit.Record)
	for _, r := range recs {
		byIssuance[r.IssuanceID] = append(byIssuance[r.IssuanceID], r)
	}
	checkReceived(t, byIssuance, got)
	checkIntents(t, byIssuance)
	checkQuotas(t, recs, got)
	checkSignatures(t, ctx, last, got)
}

// hashMember is the trailing member of every exported line.
var hashMember = regexp.MustCompile(`"hash":"([0-9a-f]{64})"}$`)

// verifyExport re-verifies an export the way an outside tool would, with
// the formula `credbrokerctl audit export --help` documents, and returns the
// records in chain order.
func verifyExport(t *testing.T, export []byte) []audit.Record {
	var recs []audit.Record
	prev := ""
	sc := bufio.NewScanner(bytes.NewReader(export))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := hashMember.FindStringSubmatchIndex(line)
		if m == nil {
			t.Fatalf("export line %d does not end with its hash: %s", len(recs)+1, line)
		}
		blanked := line[:m[2]] + line[m[3]:]
		sum := sha256.Sum256([]byte(prev + blanked))
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("export line %d: %v", len(recs)+1, err)
		}
		switch {
		case r.Seq != uint64(len(recs))+1:
			t.Fatalf("export line %d has seq %d: the chain has a gap", len(recs)+1, r.Seq)
		case r.PrevHash != prev:
			t.Fatalf("record %d does not link to its predecessor", r.Seq)
		case hex.EncodeToString(sum[:]) != r.Hash:
			t.Fatalf("record %d: hash %s, recomputed %x", r.Seq, r.Hash, sum)
		}
		prev = r.Hash
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return recs
}

// checkReceived: every credential any client received has its issued
// record, naming the caller, profile, cluster, expiry and upstream
// reference the client got, and no issuance was handed out twice.
func checkReceived(t *testing.T, byIssuance map[string][]audit.Record, got []received) {
	seen := make(map[string]bool, len(got))
	missing := 0
	for _, c := range got {
		if seen[c.issuanceID] {
			t.Errorf("issuance %s was received twice", c.issuanceID)
		}
		seen[c.issuanceID] = true
		i := slices.IndexFunc(byIssuance[c.issuanceID], func(r audit.Record) bool { return r.Decision == audit.DecisionIssued })
		if i < 0 {
			missing++
			if missing <= 5 {
				var decisions []audit.Decision
				for _, r := range byIssuance[c.issuanceID] {
					decisions = append(decisions, r.Decision)
				}
				t.Errorf("life %d: issuance %s (%s, cluster %q) was received but has no issued record; on record: %v",
					c.life, c.issuanceID, c.caller, c.cluster, decisions)
			}
			continue
		}
		r := byIssuance[c.issuanceID][i]
		if r.Caller != c.caller || r.Profile != c.profile || r.Cluster != c.cluster ||
			r.UpstreamRef != c.upstreamRef || !r.ExpiresAt.Equal(c.expiresAt) {
			t.Errorf("life %d: issuance %s: record says caller %q profile %q cluster %q ref %q expires %s; the client got %q %q %q %q %s",
				c.life, c.issuanceID, r.Caller, r.Profile, r.Cluster, r.UpstreamRef, r.ExpiresAt,
				c.caller, c.profile, c.cluster, c.upstreamRef, c.expiresAt)
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d received credentials have no issued record", missing, len(got))
	}
}

// checkIntents: an issuance with an upstream side effect (an STS session)
// has its intent on record before its result, so a session that the broker
// caused and then died is still accounted for.
func checkIntents(t *testing.T, byIssuance map[string][]audit.Record) {
	n := 0
	for id, recs := range byIssuance {
		for _, r := range recs {
			if r.Decision != audit.DecisionIssued || r.Profile != profileAWS {
				continue
			}
			n++
			if !slices.ContainsFunc(recs, func(i audit.Record) bool { return i.Decision == audit.DecisionIntent && i.Seq < r.Seq }) {
				t.Errorf("issuance %s: STS credentials issued (record %d) with no intent before them", id, r.Seq)
			}
		}
	}
	t.Logf("%d STS issuances on record, each after its intent", n)
}

// spends reports whether a record carries a quota spend: the intent of an
// issuance with an upstream side effect, or the issued record of one
// without. One issuance counts once whatever it has.
func spends(d audit.Decision) bool {
	return d == audit.DecisionIntent || d == audit.DecisionIssued
}

// checkQuotas: within the window (the whole run), no identity and no
// cluster has more spending issuances on record, or more credentials
// received, than its quota allows.
func checkQuotas(t *testing.T, recs []audit.Record, got []received) {
	type key struct{ kind, name string }
	onRecord := make(map[key]map[string]bool)
	count := func(k key, issuance string) {
		if onRecord[k] == nil {
			onRecord[k] = make(map[string]bool)
		}
		onRecord[k][issuance] = true
	}
	for _, r := range recs {
		if !spends(r.Decision) || r.IssuanceID == "" {
			continue
		}
		count(key{"identity", r.Caller}, r.IssuanceID)
		if r.Cluster != "" {
			count(key{"cluster", r.Cluster}, r.IssuanceID)
		}
	}
	receivedBy := make(map[key]int)
	for _, c := range got {
		receivedBy[key{"identity", c.caller}]++
		if c.cluster != "" {
			receivedBy[key{"cluster", c.cluster}]++
		}
	}
	limit := map[string]int{"identity": identityQuota, "cluster": clusterQuota}
	full := map[string]int{}
	for k, ids := range onRecord {
		if len(ids) > limit[k.kind] {
			t.Errorf("%s quota over-spent: %s %q has %d issuances on record within the window, max %d",
				k.kind, k.kind, k.name, len(ids), limit[k.kind])
		}
		if len(ids) == limit[k.kind] {
			full[k.kind]++
		}
	}
	for k, n := range receivedBy {
		if n > limit[k.kind] {
			t.Errorf("%s quota over-spent: clients received %d credentials for %s %q, max %d", k.kind, n, k.kind, k.name, limit[k.kind])
		}
	}
	t.Logf("quotas: %d of %d identities and %d of %d clusters have exactly their quota on record",
		full["identity"], identities, full["cluster"], len(clusters))
}

// checkSignatures: every token received in any life verifies against the
// JWKS the last life serves, so the signing key survived every kill.
// Verification runs at a time within each token's lifetime, not at the
// wall clock's.
func checkSignatures(t *testing.T, ctx context.Context, last *life, got []received) {
	disc, err := httpGet(ctx, "http://"+last.httpAddr+"/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(disc, &d); err != nil {
		t.Fatalf("discovery document: %v", err)
	}
	u, err := url.Parse(d.JWKSURI)
	if err != nil {
		t.Fatalf("jwks_uri %q: %v", d.JWKSURI, err)
	}
	jwks, err := httpGet(ctx, "http://"+last.httpAddr+u.Path)
	if err != nil {
		t.Fatal(err)
	}
	bad, tokens := 0, 0
	for _, c := range got {
		if c.token == "" {
			continue
		}
		tokens++
		at := c.expiresAt.Add(-time.Second)
		claims, err := jwt.Verify(jwks, c.token, jwtlib.WithAudience(c.profile), jwtlib.WithTimeFunc(func() time.Time { return at }))
		if err == nil && claims["jti"] != c.issuanceID {
			err = fmt.Errorf("jti %v", claims["jti"])
		}
		if err != nil {
			bad++
			if bad <= 5 {
				t.Errorf("life %d: issuance %s: %v", c.life, c.issuanceID, strings.ReplaceAll(err.Error(), c.token, "<token>"))
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d received tokens do not verify against the JWKS served after the last restart", bad, tokens)
	}
}

// checkAWS: no secret of any AWS credential a client received is in any
// file of the data directory after all the kills; and credentials received
// before the first kill and after the last are real, working at MinIO's S3
// within their cluster's prefix and refused outside it.
func checkAWS(t *testing.T, m *miniotest.Server, dataDir string, got []received) {
	var aws []received
	for _, c := range got {
		if c.aws != nil {
			aws = append(aws, c)
		}
	}
	if len(aws) == 0 {
		t.Error("no AWS credentials were received")
		return
	}
	var files [][]byte
	err := filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		files = append(files, b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range aws {
		for _, f := range files {
			if bytes.Contains(f, []byte(c.aws.GetSecretAccessKey())) || bytes.Contains(f, []byte(c.aws.GetSessionToken())) {
				t.Fatalf("life %d: issuance %s: a secret of the AWS credentials is on disk in %s", c.life, c.issuanceID, dataDir)
			}
		}
	}

	for _, c := range []received{aws[0], aws[len(aws)-1]} {
		if time.Until(c.expiresAt) < time.Minute {
			// MinIO's clock cannot be injected; a run this slow proves the rest.
			t.Logf("life %d: issuance %s: not tried at S3, it expires at %s", c.life, c.issuanceID, c.expiresAt)
			continue
		}
		creds := credentials.NewStaticCredentialsProvider(c.aws.GetAccessKeyId(), c.aws.GetSecretAccessKey(), c.aws.GetSessionToken())
		client := m.S3(t, creds)
		put := func(cluster string) error {
			_, err := client.PutObject(t.Context(), &s3.PutObjectInput{
				Bucket: awssdk.String(bucket), Key: awssdk.String(cluster + "/kubeconfig"), Body: strings.NewReader("x"),
			})
			return err
		}
		if err := put(c.cluster); err != nil {
			t.Errorf("life %d: issuance %s: credentials for %s do not work there: %v", c.life, c.issuanceID, c.cluster, err)
		}
		other := clusters[(slices.Index(clusters, c.cluster)+1)%len(clusters)]
		var api smithy.APIError
		if err := put(other); !errors.As(err, &api) || api.ErrorCode() != "AccessDenied" {
			t.Errorf("life %d: issuance %s: credentials for %s used on %s: %v, want AccessDenied", c.life, c.issuanceID, c.cluster, other, err)
		}
	}
}
