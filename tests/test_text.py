"""Text data for the language tasks: vocabularies, sources, the held-out tail, batches, errors."""

import zipfile

import numpy as np
import pytest

from dblocks_jax.data import text


def test_text8_mapping_and_byte_vocabulary_round_trip():
    ids = text.encode("Hello, World!\n\n42 times", "text8")
    assert text.decode(ids, "text8") == "hello world times"
    assert ids.max() < 27 and ids[5] == 0  # the space is id 0
    assert text.decode(text.encode("naïve ✓", "bytes"), "bytes") == "naïve ✓"
    assert text.vocab_size("text8") == 27 and text.vocab_size("bytes") == 256
    with pytest.raises(ValueError, match="unknown vocabulary 'words'; allowed: text8, bytes"):
        text.encode("x", "words")


def test_pydoc_corpus_holds_out_its_tail_and_a_unigram_floor_near_its_entropy():
    corpus = text.load_text("pydoc", "text8", holdout=0.1)
    full = text.encode(text.read_text("pydoc"), "text8")
    assert 370_000 < len(full) < 380_000  # pydoc_data.topics after the text8 mapping
    np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.test]), full)
    assert len(corpus.test) == round(0.1 * len(full))
    assert 3.9 < text.unigram_bpc(corpus) < 4.4  # its unigram entropy is 4.10 bits


def test_text8_file_uses_the_standard_split_and_zips_are_read(tmp_path):
    words = " ".join(["alpha", "beta", "gamma", "delta"] * 500)
    path = tmp_path / "text8"
    path.write_text(words)
    corpus = text.load_text(f"text8:{path}")
    n = len(words)
    assert len(corpus.train) == round(0.9 * n) and len(corpus.test) == n - round(0.95 * n)
    archive = tmp_path / "text8.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(path, "text8")
    zipped = text.load_text(f"text8:{archive}")
    np.testing.assert_array_equal(zipped.train, corpus.train)


def test_batches_are_windows_of_the_training_text_deterministic_and_resumable():
    corpus = text.load_text("pydoc")
    stream = text.TextBatches(corpus.train, 32, 8, seed=(0, 1))
    first = next(stream)["tokens"]
    assert first.shape == (8, 32) and first.dtype == np.int32
    joined = text.decode(corpus.train, "text8")
    assert all(text.decode(row, "text8") in joined for row in first)
    state = stream.state()
    expected = next(stream)["tokens"]
    stream.restore(state)
    np.testing.assert_array_equal(next(stream)["tokens"], expected)
    np.testing.assert_array_equal(next(text.TextBatches(corpus.train, 32, 8, seed=(0, 1)))["tokens"], first)
    assert not np.array_equal(next(text.TextBatches(corpus.train, 32, 8, seed=(0, 2)))["tokens"], first)
    windows = text.sequences(corpus.test, 100)
    assert windows.shape == (len(corpus.test) // 100, 100)


def test_bad_text_sources_fail_with_the_reason(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds 0 symbols .* allowed: at least 64"):
        text.load_text(f"textfile:{empty}")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("café ".encode("latin-1") * 50)
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8 text"):
        text.load_text(f"textfile:{binary}")
    with pytest.raises(FileNotFoundError, match="no such file"):
        text.load_text(f"textfile:{tmp_path / 'missing.txt'}")
    with pytest.raises(ValueError, match="unknown text source 'wiki'; allowed: pydoc, textfile:PATH, text8:PATH"):
        text.load_text("wiki")
    short = text.load_text("pydoc")
    with pytest.raises(ValueError, match="sequence length 100000; allowed: 1..37576"):
        text.sequences(short.test, 100_000)
