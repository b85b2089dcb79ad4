package broker

import (
	"crypto/tls"

	"google.golang.org/grpc/credentials"
)

func newTLSCreds(c *tls.Config) credentials.TransportCredentials {
	return credentials.NewTLS(c)
}
