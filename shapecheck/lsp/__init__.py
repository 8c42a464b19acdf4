"""`shapecheck lsp`, the language server: document.py checks a text, features.py answers
from the check (no protocol), server.py speaks the protocol with pygls (the `lsp` extra)."""
