"""
The Socket.IO dialects at C{/socket.io/}: Socket.IO v5 spoken by this server
on the Engine.IO sessions of L{signaling.transports.engineio}, with two event
sets on the default namespace, C{rooms} (seed 000) and C{calls} (seed 002).

This package holds the packet codec, the connection and the event sets only.
It sees an Engine.IO session through L{signaling.dialects.base.IEngineIOSession}
and is seen through L{signaling.dialects.base.IEngineIOHandler}; it imports
no transport (the web app hands L{SocketIOConnection} to the transport as a
factory).
"""

from .socketio import SocketIOConnection, SocketIOContext

__all__ = ["SocketIOConnection", "SocketIOContext"]
