"""HTTP routes, thin: each parses its input, calls the hub, returns the hub's answer."""
