"""One module per `sjc` sub-command; each exposes `command`."""
