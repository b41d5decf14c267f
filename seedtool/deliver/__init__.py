"""Delivery targets: how a seed reaches a VM (user-data, NoCloud ISO, disk image)."""
