// Package bench measures what the broker costs, as ratios measured side by
// side in one run, so that a figure says something about the code and not
// only about the machine. BenchmarkTable (`make bench`) measures them all,
// prints a table with each figure's goal, and writes the run to JSON
// (BENCH_JSON, default $TMPDIR/credbroker-bench-results.json) together with
// the machine it ran on and its load average.
//
// # The daemon, as operators run it
//
// The real `credbroker` binary, built from this module, runs `serve` with a
// configuration file on its own data directory: info-level logs written to a
// file, /metrics scraped every BENCH_SCRAPE (default 5s), the audit log
// durable in bbolt. Clients talk to it over loopback TCP through four
// connections, from other processes: the benchmark itself, and for P7 a
// flooding identity run as a process of this test binary. Its figures:
//
//	P1  issuance ÷ a bare gRPC echo server doing the same ES256 signing,
//	    with the same TLS 1.3 settings, in its own process (this test
//	    binary again); one identity, its request limit raised     >= 0.70
//	P3  issuance ÷ a real Vault dev server's auth/token/create/ROLE
//	    (CREDBROKER_VAULT; each Vault client has its own keep-alive
//	    HTTP/1.1 connection, as Vault's clients do)                >= 3.5
//	P5  refusals of an invalid JWT-SVID (right subject and audience,
//	    signed by a key the bundle lacks) ÷ issuance; the default
//	    limits for unauthenticated calls apply                     >= 5
//	P6  p99 of `issuances list` by identity (the admin API on the admin
//	    socket, as credbrokerctl calls it) with BENCH_P6_RECORDS
//	    (1,000,000) records ÷ with BENCH_P6_SMALL (1,000); each listing
//	    returns one full page (100 records) of an identity whose records
//	    are spread over the whole chain                            <= 3
//	P7  p99 of identity B, sending BENCH_STEADY_RATE (50) requests a
//	    second, open loop, while identity A floods past its own limit
//	    from BENCH_FLOOD_CLIENTS (32) callers ÷ B alone; default limits <= 1.5
//	growth: records and bytes the audit log gains while A floods
//	    refusals (an unknown profile) for BENCH_FLOOD (10s) as a third
//	    identity; bounded by
//	    the per-identity refusal-record limit, burst + rate × time
//
// The databases of P6 are written through the audit package in a setup step
// (fsync off while writing, one sync at the end), then each gets a daemon.
// Every server process's CPU time per request is read from /proc.
//
// # Audit off: P2
//
// The daemon cannot run without its audit log (by design), so P2 (audit on
// ÷ audit off; goal >= 0.85 at 256 clients, >= 0.60 at 32) is measured on the
// broker assembled as the daemon assembles it (assembleBroker: the same
// Gate, authenticators, request limits, policy, limits, issuer and metrics,
// logs to a file), once with the real audit log and once with one that
// records nothing, each served from a process of its own ("own process"),
// interleaved with the daemon's rounds.
//
// # In-process
//
// The older fixture runs three servers in the test process (clients too):
// echo, broker with audit on, broker with audit off. It gives P1 and P2
// in-process. BenchmarkRatios, BenchmarkIssue, BenchmarkVaultRatios and
// BenchmarkAuditAppend measure parts of it alone.
//
// # The fleet
//
// runFleet (in BenchmarkTable, and alone as BenchmarkFleet) simulates a CAPI
// fleet: FLEET_CLUSTERS (1000) workload clusters, each with 3 controllers
// and 10 nodes of their own SPIFFE IDs (JWT-SVIDs), served by 3 broker
// replicas wired as the daemon wires them on etcd (quota spends in a
// 3-member embedded etcd, each replica on its own member with its own
// client; each replica's own durable audit chain). Compressed in time:
// every identity asks FLEET_ATTEMPTS (3) times as fast as FLEET_CLIENTS
// (64) callers can, against an hour's quotas (2 per identity, 20 per
// cluster) on a fixed clock. It reports throughput, p50/p99 latency, the
// etcd calls per issuance (a client interceptor counts every unary call,
// the replicas' revocation probes included), and quota exactness: exactly
// 20 issued per cluster, each cluster's window in etcd reading the same
// (a mismatch fails the run). TestFleetSmall runs it with 5 clusters in the
// regular suite.
//
// Figures are printed, never asserted: speed is measured, behaviour is
// tested. A run fails only when the harness breaks (a server does not start,
// a request that must succeed fails, the audit chain does not verify).
//
// # Tuning (environment)
//
//	BENCH_CLIENTS     closed-loop client counts of P1/P2/P3/P5 ("256,32")
//	BENCH_ROUND       length of one round (2s); BENCH_ROUNDS rounds per
//	                  variant (5), interleaved after a 500ms warm-up each
//	BENCH_P6_RECORDS, BENCH_P6_SMALL, BENCH_P6_QUERIES (1000 timed per side)
//	BENCH_FLOOD, BENCH_FLOOD_CLIENTS, BENCH_STEADY_RATE
//	BENCH_DIR         where data directories live (default a temp dir; must
//	                  be on the disk whose fsync is to be measured); P6's
//	                  databases are kept in BENCH_DIR/cache, named for the
//	                  audit package's source, and copied from there
//	BENCH_CONCURRENCY client count of BenchmarkRatios and BenchmarkIssue
//	FLEET_CLUSTERS, FLEET_ATTEMPTS, FLEET_CLIENTS  the fleet's size (above)
//
// With the defaults a run takes about four minutes on two cores (plus, once,
// about a minute and a half to write the million records).
package bench
