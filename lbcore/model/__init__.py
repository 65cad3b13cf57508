"""Kubernetes objects over the core: the kinds, defaults, validation and admission, the one
endpoint rule, the service table and its snapshot, the Picker of a service port, and kubectl's
printing. Pure Python; no files, sockets or asyncio."""
