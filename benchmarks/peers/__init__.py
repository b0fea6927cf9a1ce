"""Peers: a server started for the run plus the client command that sends a file to it."""
