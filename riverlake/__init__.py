"""Riverlake: Prefect flows on ephemeral Dask clusters, Delta tables on S3, Panel apps.

From a notebook::

    from riverlake import connect, read_table
    client = connect()               # the running cluster, or a new LocalCluster
    flights = read_table("flights")  # a dask DataFrame over the Delta table
"""

__version__ = "0.1.0"

__all__ = ["connect", "read_table"]


def __getattr__(name: str):
    if name == "read_table":
        from riverlake.lake import read_table

        return read_table
    if name == "connect":
        from riverlake.cluster import connect

        return connect
    raise AttributeError(name)
