"""`agentguard watch`: a live Textual view over the store.

The package is split so that the headless library never imports Textual: `data` (read-only
queries returning plain dataclasses), `formatting` (pure text) and `trees` (diff and restore
through the shadow store) are Textual-free; `app`, `messages`, `screens/` and `widgets/` are
the Textual side. `watch.run` is the entry point the CLI calls; it imports Textual lazily.
"""
