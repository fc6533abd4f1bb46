"""The operator console at ``/ui``: a single-page app built from ``ui/`` at the repository's
root (``make ui``) into ``static/``, which ships inside the package (no Node.js to install or
serve it). It only calls the public ``/admin`` and ``/v1`` APIs, with the admin key the user
logs in with."""
