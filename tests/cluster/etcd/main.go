// Command etcd is upstream's etcd server (go.etcd.io/etcd/server/v3's main package calls
// exactly this); it exists because that package's module has replace directives, which
// "go install module@version" refuses.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
