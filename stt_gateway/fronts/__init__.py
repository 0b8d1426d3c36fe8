"""The fronts: vendors' protocols spoken to their own clients, and vendors' services used as
engines. Each vendor is one package; its JSON never leaves it."""
