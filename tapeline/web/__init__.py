"""The live dashboard (`tapeline web`): server, control, static page."""
