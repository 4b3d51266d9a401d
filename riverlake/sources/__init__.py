"""Extraction: source connectors configured as data in the pipeline declarations.

``base`` (what every connector shares), ``spec`` (the specs), ``files``, ``http``,
``sql`` (batch connectors), ``stream`` (NATS JetStream micro-batches), and ``ingest``
(the batch run: plan, parallel read, quarantine, commit with state), which imports the
connectors; they import only ``base``.
"""
