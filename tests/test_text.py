"""Text data for the language tasks: vocabularies, sources, the held-out tail, batches, errors."""

import json
import zipfile

import numpy as np
import pytest

from dblocks_jax.data import corpus as corpora
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


def _take(stream, n: int) -> list:
    return [next(stream)["tokens"] for _ in range(n)]


def test_tfds_text_corpus_holds_out_the_test_split_and_keeps_a_bounded_train_sample(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from dblocks_jax.data import text_tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with tfds.testing.mock_data(num_examples=40):  # each record: 10-19 random symbols of " abcdefghij"
        corpus = corpora.load_corpus("tfds:tiny_shakespeare", "text8")
        assert isinstance(corpus, text_tfds.TfdsTextCorpus) and corpus.vocab_size == 27
        for ids in (corpus.train, corpus.test):
            assert ids.dtype == np.uint8 and 40 * 8 < len(ids) and ids.max() < 27
        assert 2.5 < text.unigram_bpc(corpus) < np.log2(27)
        assert corpus.fingerprint()["train_records"] == 40
        capped = text_tfds.tfds_corpus("tfds:tiny_shakespeare", "bytes", max_test_symbols=100, count_records=3)
        assert len(capped.test) == 100 and np.sum(capped.train == ord("\n")) == 3  # 3 documents, each ended


def test_tfds_text_stream_is_deterministic_per_seed_and_resumes_exactly_after_a_json_round_trip(
        tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from dblocks_jax.data import text_tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with tfds.testing.mock_data(num_examples=24):
        corpus = text_tfds.tfds_corpus("tfds:lm1b", "text8", shuffle_symbols=256)  # 16 windows a buffer
        first = _take(corpus.batches(16, 4, seed=(0, 1)), 12)  # 3 buffers, ~2 epochs of 24 documents
        assert first[0].shape == (4, 16) and first[0].dtype == np.int32
        assert all(0 <= b.min() and b.max() < 27 for b in first)
        np.testing.assert_array_equal(np.stack(_take(corpus.batches(16, 4, seed=(0, 1)), 12)), np.stack(first))
        assert not np.array_equal(np.stack(_take(corpus.batches(16, 4, seed=(0, 2)), 12)), np.stack(first))
        for k in (0, 3, 5, 9):  # inside and across shuffle buffers and documents
            stream = corpus.batches(16, 4, seed=(0, 1))
            _take(stream, k)
            state = json.loads(json.dumps(stream.get_state()))  # what a checkpoint record stores
            resumed = corpus.batches(16, 4, seed=(0, 1))
            resumed.set_state(state)
            np.testing.assert_array_equal(np.stack(_take(resumed, 3)), np.stack(first[k:k + 3]))


def _prepare_text_dataset(data_dir, train_documents: list[str], test_documents: list[str]) -> str:
    """A real (tiny) TFDS text dataset written as array_record by TFDS's own builder machinery."""
    import tensorflow_datasets as tfds

    class TinyPlays(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(train_documents),
                    "test": self._generate_examples(test_documents)}

        def _generate_examples(self, documents):
            yield from enumerate({"text": d} for d in documents)

    TinyPlays(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "tfds:tiny_plays"


def test_a_document_longer_than_a_window_is_cut_into_many_windows_in_a_seeded_order(tmp_path, monkeypatch):
    """One document, like a tiny_shakespeare split, read from real array_record files (records are
    bytes there): every window of the first pass is a cut of it, none truncated, order seeded."""
    from dblocks_jax.data import text_tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    play = text.read_text("pydoc").encode("ascii", "ignore").decode()[:4999]  # 4999 bytes
    source = _prepare_text_dataset(tmp_path, [play], ["naïve ✓", "Ay, there's the rub."])
    corpus = text_tfds.tfds_corpus(source, "bytes", shuffle_symbols=5000)  # 100 windows of 50 a buffer
    document = text.encode(play + "\n", "bytes")
    np.testing.assert_array_equal(corpus.train, document)
    assert sorted(text.decode(corpus.test, "bytes").split("\n")) == ["", "Ay, there's the rub.", "naïve ✓"]
    windows = np.concatenate(_take(corpus.batches(50, 4, seed=1), 25))
    cuts = document.reshape(100, 50)
    assert sorted(map(bytes, windows.astype(np.uint8))) == sorted(map(bytes, cuts))
    assert not np.array_equal(windows, cuts)  # shuffled, not consecutive text
    other = np.concatenate(_take(corpus.batches(50, 4, seed=2), 25))
    assert not np.array_equal(other, windows)


def test_tfds_sources_that_are_not_text_or_not_prepared_fail_at_once(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match=r"TFDS dataset 'mnist' has features \['image', 'label'\]; "
                                             r"a text dataset needs a `text` feature"):
            corpora.load_corpus("tfds:mnist")

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", no_network)
    with pytest.raises(ValueError, match=r"TFDS dataset 'tiny_shakespeare' is not prepared in .*"
                                         r"tfds build tiny_shakespeare --file_format=array_record"):
        corpora.load_corpus("tfds:tiny_shakespeare")
    with pytest.raises(ValueError, match="allowed: pydoc, textfile:PATH, text8:PATH, tfds:NAME"):
        text.load_text("wiki")
