"""Hostile: tries to reach the outside world (DNS-free, straight to an IP) and exfiltrate."""

import socket

with socket.create_connection(("1.1.1.1", 80), timeout=5) as conn:
    conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
print("network reached")
