# Phones home: a TCP connection to the grader's loopback (the port the test listens on).
import socket

try:
    with socket.create_connection(("127.0.0.1", ATTACK_PORT), timeout=2) as connection:
        connection.sendall(b"answers, please")
except OSError:
    pass
