"""The pick policy in C (``pick_new``, ``choose``, ``client_ip_hash``): C functions only, for
``lbcore.core._picker_c`` and compiled plugins; nothing here is called from Python."""
