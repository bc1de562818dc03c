"""Brokers behind the execution gateway: dry-run (default), paper, MetaTrader 5."""
