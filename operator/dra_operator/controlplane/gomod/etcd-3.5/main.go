// Command etcd is the etcd server, built from the published go.etcd.io/etcd/server/v3 module.
// Upstream's server/go.mod replaces api, client and pkg with ../ paths, so `go install` of it is refused;
// this consumer module requires the published modules instead and calls the same entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
