"""The config: its typed schema (every key's type, default, range and doc), the defaults and the start-up checks."""
