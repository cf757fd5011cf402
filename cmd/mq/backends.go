package main

// The backends this command can reach, by URL scheme. Adding a broker is one
// blank import here.
import (
	_ "github.com/mqkit/mq/memory" // mem://
)
