"""mxrc-nonrt: the process that owns the state and talks to people (bus, health,
watchdog, admin API)."""
