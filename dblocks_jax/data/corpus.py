"""Every kind of text source behind one call: files and the bundled pydoc text (`text`, held in
memory) and TFDS datasets (`text_tfds`, streamed). The language tasks read their corpus here."""

from __future__ import annotations

from dblocks_jax.data import text


def load_corpus(source: str, vocabulary: str = "text8", holdout: float = 0.1) -> text.TextCorpus:
    """The corpus of `source` (pydoc, textfile:PATH, text8:PATH or tfds:NAME) in `vocabulary`: a
    file's last `holdout` is held out; text8 and TFDS hold out their own test split, so `holdout`
    does not apply to them."""
    if source.startswith("tfds:") and len(source) > len("tfds:"):
        from dblocks_jax.data import text_tfds  # imports Grain: only for TFDS sources

        return text_tfds.tfds_corpus(source, vocabulary)
    return text.load_text(source, vocabulary, holdout)
