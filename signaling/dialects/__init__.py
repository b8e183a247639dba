"""
One module per wire protocol; each turns frames into hub calls and hub events
into frames.

The rule: dialects know no transport beyond the frame-sink interface. A
dialect imports the hub and the small shared modules, and sees its
connection only through L{base.IFrameSink} (a raw WebSocket) or
L{base.IEngineIOSession} (Socket.IO's Engine.IO session), both defined here;
nothing in this package imports L{signaling.transports}. Transports know no
dialect; the hub knows neither. C{tests/test_layers.py} checks it.
"""
