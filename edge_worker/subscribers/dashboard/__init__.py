"""The ward dashboard: every station's verdicts live in a browser.

``state`` turns MQTT messages into per-station state (pure, no I/O); ``feed`` is the MQTT
subscription that feeds it; ``server`` serves the page, a JSON snapshot and a server-sent
event stream.  The page itself (``static/``) is plain HTML, CSS and JavaScript written here.
"""
