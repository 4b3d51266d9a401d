"""Panel apps. Each module in APPS is served by `riverlake serve` (one `panel serve`)."""

APPS = [
    "flights_dashboard",
    "gold_dashboard",
    "table_explorer",
    "pipeline_health",
    "big_data",
]
