"""Launchers: one module per cloud or hypervisor, each giving every instance its own seed."""
