"""Extraction: source connectors configured as data in flows/pipelines.yaml.

``spec`` (the specs), ``ingest`` (the batch run: plan, parallel read, quarantine,
commit with state), ``files``, ``http``, ``sql`` (batch connectors), ``stream`` (NATS
JetStream micro-batches), ``demo`` (the local stack's demo sources).
"""
