"""Benchmarks and long-running harnesses for Relay; run by hand or by ``make bench``, never by pytest."""
