"""
Where bytes arrive and leave: the guarded HTTP site (L{site}, with the
per-address limits of L{addresses}), the Autobahn WebSocket binding of the
raw dialects (L{websocket}), the Engine.IO server (L{engineio}, sessions;
L{engineio_resource}, polling, WebSocket and upgrade over HTTP), and the
per-connection limits they share (L{limits}: send buffer, message rate).

The rule: transports know no dialect. A transport imports the hub's edge and
L{signaling.dialects.base} (the interfaces between the two: L{IFrameSink
<signaling.dialects.base.IFrameSink>}, the Engine.IO session and handler
interfaces, L{HandshakeInfo <signaling.dialects.base.HandshakeInfo>}, the
close codes, the L{Session <signaling.dialects.base.Session>} base), never a
dialect module; which dialect speaks on a route is decided by
L{signaling.web}, which hands the transport a factory. Dialects know no
transport beyond the frame-sink interface; the hub knows neither.
C{tests/test_layers.py} checks it.
"""
