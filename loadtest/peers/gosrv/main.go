// Go net/http peer for `python -m loadtest bench` (run with GOMAXPROCS=1).
//
// usage: gosrv LISTEN STATIC_DIR
//
//	LISTEN: fd:N (an inherited listening socket) or host:port
//
// GET /plaintext -> Hello, World!   GET /json -> {"message":"Hello, World!"} (encoded per request)
// /static/...    -> http.FileServer on STATIC_DIR (sendfile)
package main

import (
	"encoding/json"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

type message struct {
	Message string `json:"message"`
}

func listen(spec string) net.Listener {
	if strings.HasPrefix(spec, "fd:") {
		fd, err := strconv.Atoi(spec[3:])
		if err != nil {
			log.Fatal(err)
		}
		l, err := net.FileListener(os.NewFile(uintptr(fd), "listener"))
		if err != nil {
			log.Fatal(err)
		}
		return l
	}
	l, err := net.Listen("tcp", spec)
	if err != nil {
		log.Fatal(err)
	}
	return l
}

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: gosrv fd:N|host:port STATIC_DIR")
	}
	hello := []byte("Hello, World!")
	mux := http.NewServeMux()
	mux.HandleFunc("/plaintext", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(hello)
	})
	mux.HandleFunc("/json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(message{"Hello, World!"})
	})
	mux.Handle("/static/", http.StripPrefix("/static/", http.FileServer(http.Dir(os.Args[2]))))
	log.Fatal(http.Serve(listen(os.Args[1]), mux))
}
