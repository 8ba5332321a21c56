"""netpoll's keep-alive HTTP/1.1 server and web framework."""
