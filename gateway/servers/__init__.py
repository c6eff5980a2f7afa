"""Network sessions (asyncio) wrapping the sans-I/O protocol cores."""
