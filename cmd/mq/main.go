// Command mq produces, consumes and inspects messages on any broker the
// mqkit SDK supports, and runs a demo order pipeline.
//
//	mq [-url URL] <command> [flags]
//
// The broker URL comes from -url, else the MQ_URL environment variable.
// There is no default: a command without one fails rather than run on a
// throwaway broker. mem:// names an in-process broker that lives as long
// as the command; mq demo uses it when no URL is given. Help never shows
// the URL (it may hold a password).
//
// mq consume reads in a private consumer group that it deletes on exit,
// so it takes nothing from a live service; -group G -ack consumes, and
// acknowledges, as a member of G. Read commands (consume without -group,
// dlq list, dlq redrive -dry-run, lag) never create topics.
//
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
