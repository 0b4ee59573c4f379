"""The operator console at ``/console``: server-rendered pages (Jinja2) behind a password.

``mount.py`` wires it (and ``/metrics``) into the web app; ``auth.py`` holds the session,
CSRF and sign-in limit; ``pages.py`` the routes; ``views.py`` the pure view-model helpers.
"""
