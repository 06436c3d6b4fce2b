"""One module per framework; only worker processes import them. The registry imports none."""
