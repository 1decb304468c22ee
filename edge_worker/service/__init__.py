"""The station as a service: the composition root, systemd, health, metrics, config and the checks before going live."""
