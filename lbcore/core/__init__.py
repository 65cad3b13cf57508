"""The compiled core and its readable twins: label selectors, stable hashing, balancing
algorithms, connection and affinity tables, and the pick core (connection table, affinity, then
the balancer, skipping backends marked down).

It knows nothing of Kubernetes, files, sockets or asyncio; ``lbcore.model`` builds on it.
"""
