"""Remote rendering: the wire format (protocol.py), the Ray Serve render server (server.py, deployment.py) and its
benchmark (bench.py). The client is remote/client.py."""
