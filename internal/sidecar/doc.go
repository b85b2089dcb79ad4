// Package sidecar serves broker-issued AWS credentials to an unmodified AWS
// SDK program in the same pod, through the SDK's container-credentials
// provider (AWS_CONTAINER_CREDENTIALS_FULL_URI on loopback plus an
// authorization token file).
//
// A Refresher per served credential keeps it fresh: it refreshes in the
// background at a fraction (default 0.8, jittered) of each credential's
// lifetime, makes at most one upstream call at a time, keeps serving the last
// good credential while the broker is down, retries with bounded jittered
// backoff, and never hands out a credential that expires within ExpirySkew.
// Handler serves the credentials, /healthz and /metrics on loopback, and
// Handler.MonitorHandler /healthz and /metrics alone on a listener of their
// own that Prometheus and the kubelet can reach; Run wires it all, and is
// what cmd/credbroker-sidecar calls.
package sidecar
