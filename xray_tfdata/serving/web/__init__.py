"""The web app that serves one exported classifier: an upload page and TF Serving's REST API.

Django (the source tutorial's framework), configured in code (`settings.configure`), run by
waitress (`server.serve`). Modules: settings (the one settings dataclass + Django's settings),
model (load once, share between threads), payloads (body -> image bytes, every bad input named),
intake (decoded-byte budget, one reason per bad file), middleware (413, access log, security
headers), guard (waitress: a deadline per request, JSON errors), views, urls, server.
Install with `pip install -e '.[web]'`; start with `python -m xray_tfdata.serve`.
"""
