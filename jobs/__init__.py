"""instructlake driver side: config, Spark session, Delta table store and one module per stage."""

__version__ = "0.1.0"
