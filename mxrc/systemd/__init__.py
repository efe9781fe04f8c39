"""Fitting the host: systemd units rendered from the one configuration."""
