// Go http.FileServer peer for loadtest/staticbench.py: go run . PORT DIR (serves DIR at /static/).
// Run with GOMAXPROCS=1 so it is one worker like the others.
package main

import (
	"log"
	"net/http"
	"os"
)

func main() {
	fs := http.StripPrefix("/static/", http.FileServer(http.Dir(os.Args[2])))
	http.Handle("/static/", fs)
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Args[1], nil))
}
