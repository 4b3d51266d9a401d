"""Riverlake: Prefect flows on ephemeral Dask clusters, Delta tables on S3, Panel apps."""

__version__ = "0.1.0"
