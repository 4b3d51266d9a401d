"""The operator's tooling, the top of the stack: the ``riverlake`` command (:mod:`.cli`),
the local stack supervisor (:mod:`.stack`) and the Prometheus exporter (:mod:`.metrics`).

Nothing in the library imports this package.
"""
