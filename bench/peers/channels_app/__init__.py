"""Minimal Django Channels project used as the peer in bench/fanout_ws.py."""
