"""The web console on the API server's own address, under `/console`: pages a person reads in
a browser, fed by JSON views over the same services the API answers from.

The browser never holds the server's key pair after logging in, and never signs SigV4: a
session cookie (HttpOnly, SameSite=Strict) stands for it, and every request that changes
something also carries the session's CSRF token.
"""
