"""The `brightrun` command line: the top floor, above flows and tasks.

Each area registers its commands from its own module here, so the modules stay small and
import heavy dependencies lazily. Nothing under `brightrun/` imports this package.
"""
