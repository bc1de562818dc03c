"""Brokers behind the execution gateway: dry-run (default), paper, Interactive Brokers, MetaTrader 5."""
