"""The WSGI layers in front of Flask, each a small callable of its own.

- ``access``: who sees details (token, trusted network), and the caller behind a
  named proxy;
- ``security``: security headers on every answer, and the problem JSON of gunicorn's
  own errors;
- ``request_ids``: ``X-Request-ID``, kept when safe, made otherwise, echoed;
- ``routes``: the matched route template, noted for metrics.

The factory (``petsage.app``) stacks them in the order its ``wrap_in_middleware``
gives, and says why.
"""
