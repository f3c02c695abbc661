"""A free TCP port for a test's torch.distributed rendezvous.

Tests run two at a time (pytest-xdist, `-n 2` in CI), so a fixed `--master_port` would let two DDP tests meet
at one rendezvous, or fail with "address in use". The OS picks an unused port instead.
"""
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
