"""The web side: Falcon WSGI app run by gunicorn workers. It never imports torch."""

__version__ = "1.0.0"
