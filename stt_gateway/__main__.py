"""``python -m stt_gateway``: same as the ``stt-gateway`` command."""

from .cli import main

# Guarded: engine worker processes are spawned, and spawning re-imports the main module.
if __name__ == "__main__":
    main()
