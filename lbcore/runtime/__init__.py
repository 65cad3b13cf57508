"""The daemon's parts: the store and its admin API, ClusterState (the one writer to the
frontends), config, logs, and the interfaces sources and frontends implement."""
