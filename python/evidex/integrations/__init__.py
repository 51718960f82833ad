"""Vector stores for retrieval frameworks, over `evidex.HNSWIndex`: each an optional
extra, imported by its own module.

- `evidex.integrations.langchain.EvidexVectorStore` (``pip install 'evidex[langchain]'``)
- `evidex.integrations.llama_index.EvidexLlamaStore` (``pip install 'evidex[llama-index]'``)
"""
