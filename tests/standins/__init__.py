"""Stand-ins for external providers only (MetaTrader5 module, ib_async IB object); never for our own code."""
