"""Relay: a gRPC job service for AI actions over Redis, and its zero-downtime layout migration."""
