"""The ``lbcore`` command: kubectl's verbs against the admin API or a cluster, the daemon, the
demo and the balancers' benchmark (``lbcore.cli.main``)."""
