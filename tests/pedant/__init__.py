"""Ports of the original server's REST integration suite (oc-pushy-pedant) against our real server."""
