"""
One module per wire protocol; each turns frames into hub calls and hub events
into frames.
"""
