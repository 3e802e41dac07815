"""The test-and-bench harness: private processes on free ports, shared by ``tests/`` and ``bench/``.

Not shipped in the wheel (pyproject's packages.find includes only ``relay*``). One module per thing
started: ``redis_server`` (a private redis-server), ``redis_cluster`` (a private Redis Cluster).
"""
