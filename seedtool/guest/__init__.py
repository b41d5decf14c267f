"""The guest side: runs inside the VM at boot. Standard library (+ optional cryptography) only."""
