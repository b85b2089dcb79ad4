// Command credbrokerctl is the credbroker admin CLI. It talks only to the
// broker's AdminService over the admin unix socket; it never opens the
// broker's database.
package main

import (
	"context"
	"os"
	"os/signal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
