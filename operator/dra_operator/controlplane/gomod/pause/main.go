// Command pause is the sandbox container of the real test nodes: it holds a Pod's namespaces open, reaps
// the orphans that end up as its children (it is PID 1 when the Pod shares its PID namespace), and exits at
// once on SIGINT or SIGTERM so a Pod stops without waiting out a grace period.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
