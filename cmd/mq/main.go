// Command mq produces, consumes and inspects messages on any broker the
// mqkit SDK supports, and runs a demo order pipeline.
//
//	mq [-url URL] <command> [flags]
//
// The broker URL comes from -url, else the MQ_URL environment variable,
// else mem:// (an in-process broker that lives as long as the command).
// Run "mq help" for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
