"""The engine's child processes: thin shells (rings, sockets, signals, lifecycle) around cores in `engine/`."""
