"""``python -m stt_gateway``: same as the ``stt-gateway`` command."""

from .cli import main

main()
