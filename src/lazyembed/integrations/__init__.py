"""Native adapters for the frameworks people reach lazyembed through.

Each adapter lives in its own module and imports its framework there, so importing
``lazyembed`` (or this package) never imports a framework; each needs its extra:

- `lazyembed.integrations.langchain` — ``pip install 'lazyembed[langchain]'``
- `lazyembed.integrations.llama_index` — ``pip install 'lazyembed[llama-index]'``
- `lazyembed.integrations.chroma` — ``pip install 'lazyembed[chroma]'``
- `lazyembed.integrations.ray` — ``pip install 'lazyembed[ray]'``

Every adapter wraps an in-process `lazyembed.Embedder`: the model loads on first use and
unloads when idle, the vectors are the library's, and no server is involved.
"""
