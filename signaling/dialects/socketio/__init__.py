"""
The Socket.IO dialects at C{/socket.io/}: Engine.IO v4 and Socket.IO v5
spoken by this server, with two event sets on the default namespace,
C{rooms} (seed 000) and C{calls} (seed 002).
"""

from .resource import SocketIOResource

__all__ = ["SocketIOResource"]
