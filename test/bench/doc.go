// Package bench measures what the broker costs. It runs three servers in one
// process on loopback, all with the same TLS 1.3 mTLS setup and the same
// ES256 JWT issuer:
//
//   - echo: a bare gRPC server whose IssueCredential only signs the token;
//   - audit on: the real broker (Gate, policy, limits, bbolt audit log with
//     fsync, metrics, logging);
//   - audit off: the same broker with an audit log that records nothing.
//
// BenchmarkRatios drives them with closed-loop clients in interleaved rounds
// and reports the two ratios side by side:
//
//	P1 = broker (audit on) QPS / echo QPS    target >= 0.70
//	P2 = audit on QPS / audit off QPS        target >= 0.85
//
// It prints them; it never fails on them: speed is measured, behaviour is
// tested. BenchmarkIssue runs each variant under b.RunParallel for benchstat.
//
// Tuning (environment): BENCH_CONCURRENCY (client goroutines, default 32),
// BENCH_ROUND (duration of one round, default 2s), BENCH_ROUNDS (rounds per
// variant, default 3), BENCH_DIR (where the audit bbolt file lives; default a
// temporary directory, which must be on a real disk for fsync to count).
package bench
