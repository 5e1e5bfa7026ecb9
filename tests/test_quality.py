"""The data-quality algorithms (`hftransfer.quality`) on small synthetic sets with planted problems."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hftransfer import quality


def clusters(n_per_class=150, classes=5, dims=64, spread=1.2, seed=0):
    """Gaussian class clusters: features, true labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dims, generator=generator) * 2
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dims, generator=generator), labels


def flip(labels, fraction, classes, seed=0):
    rng = np.random.default_rng(seed)
    noisy = labels.clone()
    rows = rng.choice(len(labels), int(fraction * len(labels)), replace=False)
    for r in rows:
        noisy[r] = int(rng.choice([c for c in range(classes) if c != labels[r]]))
    return noisy, set(rows.tolist())


def test_label_issues_finds_flipped_labels_most_likely_first():
    features, truth = clusters()
    noisy, flipped = flip(truth, 0.1, 5)
    issues = quality.label_issues(features, noisy, 5)
    rows = [i["row"] for i in issues]
    top = rows[:len(flipped)]
    assert len(set(top) & flipped) >= 0.8 * len(flipped)
    assert len(set(rows)) == len(rows)
    scores = [i["score"] for i in issues]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for issue in issues:
        assert issue["given"] == noisy[issue["row"]] and issue["suggested"] != issue["given"]
    right = [i for i in issues if i["row"] in flipped]
    assert np.mean([i["suggested"] == truth[i["row"]] for i in right]) > 0.8


def test_label_issues_flags_few_on_clean_labels():
    features, labels = clusters(spread=0.8)
    assert len(quality.label_issues(features, labels, 5)) < 0.02 * len(labels)


def test_label_issues_are_reproducible_and_follow_the_seed():
    features, truth = clusters(classes=4, spread=2.0)
    noisy, _ = flip(truth, 0.1, 4)
    first = quality.label_issues(features, noisy, 4, seed=3)
    assert first == quality.label_issues(features, noisy, 4, seed=3)
    assert quality.stratified_folds(noisy, 5, 3).tolist() != quality.stratified_folds(noisy, 5, 4).tolist()


def test_folds_are_stratified():
    _, labels = clusters(n_per_class=23, classes=3)
    fold = quality.stratified_folds(labels, 5, 0)
    for c in range(3):
        sizes = torch.bincount(fold[labels == c], minlength=5)
        assert sizes.max() - sizes.min() <= 1


def test_tiny_classes_do_not_crash_and_are_not_scored():
    features, labels = clusters(n_per_class=40, classes=3)
    features = torch.cat([features, features[:2] + 5.0])
    labels = torch.cat([labels, torch.tensor([3, 3])])  # a fourth class with 2 examples, fewer than the 5 folds
    issues = quality.label_issues(features, labels, 5)
    assert not {len(labels) - 2, len(labels) - 1} & {i["row"] for i in issues}
    assert quality.label_issues(features[:6], labels[:6], 5) == []  # too few rows for the folds
    one_class = quality.label_issues(features[:40], labels[:40], 5)
    assert one_class == []


def test_near_duplicates_finds_a_planted_copy_and_not_the_rest():
    reference, _ = clusters(n_per_class=100)
    query, _ = clusters(n_per_class=20, seed=1)
    query[7] = reference[123] + 0.01 * torch.randn(reference.shape[1])
    pairs = quality.near_duplicates(query, reference, threshold=0.99)
    assert [(i, j) for i, j, _ in pairs] == [(7, 123)]
    assert pairs[0][2] > 0.99


def test_near_duplicates_within_one_set_report_each_copy_once_with_the_earlier_row_it_is_most_like():
    rows, _ = clusters(n_per_class=30)
    rows[50] = rows[3] * 2.0  # the same direction: a copy at another scale
    rows[90] = rows[50] + 1e-3
    rows[120] = rows[7]
    rows[121] = rows[120] + 0.03 * torch.randn(rows.shape[1])  # a little more like 7 and 120 than like others
    pairs = quality.near_duplicates(rows, threshold=0.999)
    assert [j for _, j, _ in sorted(pairs, key=lambda p: p[1])] == [50, 90, 120, 121]  # each copy once
    found = {j: i for i, j, _ in pairs}
    assert found[50] == 3 and found[90] in (3, 50) and found[120] == 7 and found[121] in (7, 120)
    unit = torch.nn.functional.normalize(rows, dim=1)
    for i, j, similarity in pairs:  # the best earlier row: none before j is more alike
        assert similarity == pytest.approx(float(unit[i] @ unit[j]), abs=1e-6)
        assert float((unit[:j] @ unit[j]).max()) <= similarity + 1e-6
    assert [s for *_, s in pairs] == sorted([s for *_, s in pairs], reverse=True)


def test_a_row_repeated_many_times_is_that_many_pairs_not_every_pair_of_them():
    """2,000 repeats of "thank you" in 20,000 training texts were two million pairs within training (in memory, in
    data_quality.json); each repeat is now reported once, with the first."""
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), 40)) for _ in range(300)]
    texts[10::3] = ["Thank you."] * len(texts[10::3])
    texts[11::3] = ["thank   you!"] * len(texts[11::3])  # near copies of it
    found = quality.duplicates(signed(texts))
    repeats = [j for j, text in enumerate(texts) if "hank" in text][1:]
    assert sorted(j for _, j, _ in found) == repeats
    first = {j: i for i, j, _ in found}
    assert all(first[j] == (11 if texts[j] == "thank   you!" and j > 11 else 10) for j in repeats)  # exact, else near


@pytest.mark.parametrize("reference", [True, False])
def test_chunking_gives_the_same_pairs(monkeypatch, reference):
    rows = torch.randn(300, 8)
    other = torch.randn(200, 8) if reference else None
    whole = quality.near_duplicates(rows, other, threshold=0.8)
    monkeypatch.setattr(quality, "_CHUNK", 56)  # blocks of 7 rows (of 8 values) against 7 reference rows
    chunked = quality.near_duplicates(rows, other, threshold=0.8)
    assert len(whole) > 0
    assert [(i, j) for i, j, _ in whole] == [(i, j) for i, j, _ in chunked]
    assert np.allclose([s for *_, s in whole], [s for *_, s in chunked])


@pytest.mark.parametrize("width, chunk", [(8, 56), (16, 16 * 24), (16, 16 * 50), (64, 64 * 7), (64, 64 * 13)])
def test_copies_across_blocks_name_the_first_copy(monkeypatch, width, chunk):
    """Identical rows give similarities a float's last digit apart in blocks of other shapes; a copy still names
    the first copy (these layouts paired some with a later copy, or scored a copy 1.0000001)."""
    rows = torch.randn(300, width, generator=torch.Generator().manual_seed(0))
    copies = list(range(9, 300, 7))
    rows[copies] = rows[9].clone()
    monkeypatch.setattr(quality, "_CHUNK", chunk)
    found = quality.near_duplicates(rows, threshold=0.9999)
    assert {j: i for i, j, _ in found} == {j: 9 for j in copies[1:]}
    assert all(s <= 1.0 for *_, s in found)
    across = quality.near_duplicates(rows[copies[3:]], rows, threshold=0.9999)
    assert [i_j[:2] for i_j in across] == [(i, 9) for i in range(len(copies) - 3)]


def png_bytes(array, fmt="PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def garment(seed):
    """A random blocky grey picture, like a small product photo."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (7, 7)), np.ones((4, 4))).astype(np.uint8)


def test_content_keys_of_texts_and_images(tmp_path):
    assert quality.content_key("A  Good\nFilm ") == quality.content_key("a good film")
    assert quality.content_key("a good film") != quality.content_key("a good film!")
    data = png_bytes(garment(0))
    (tmp_path / "a.png").write_bytes(data)
    by_bytes = quality.content_key({"bytes": data, "path": None})
    assert by_bytes == quality.content_key({"bytes": None, "path": str(tmp_path / "a.png")})
    assert by_bytes == quality.content_key(tmp_path / "a.png")
    assert by_bytes != quality.content_key({"bytes": png_bytes(garment(1)), "path": None})
    assert quality.content_key(Image.fromarray(garment(0))) == quality.content_key(Image.fromarray(garment(0)))


def test_exact_duplicates():
    keys = ["a", "b", "a", "c", "a"]
    assert quality.exact_duplicates(keys) == [(0, 2), (0, 4)]  # each repeat with the first
    assert quality.exact_duplicates(["c", "x", "a"], keys) == [(0, 3), (2, 0)]


signed = quality.Signatures.of


def test_an_image_reencoded_at_another_size_is_a_near_duplicate_and_others_are_not():
    originals = [garment(s) for s in range(30)]
    train = [{"bytes": png_bytes(a), "path": None} for a in originals]
    copy = Image.fromarray(originals[4]).resize((21, 21), Image.BICUBIC)
    validation = [{"bytes": png_bytes(np.asarray(copy), "JPEG", quality=60), "path": None},
                  *({"bytes": png_bytes(garment(100 + s)), "path": None} for s in range(10))]
    found = quality.duplicates(signed(validation), signed(train))
    assert [(i, j) for i, j, _ in found] == [(0, 4)]


def test_text_copies_exact_changed_and_unrelated():
    train = ["A touching examination of the ravages of Alzheimer's disease.", "An entertaining film.",
             "The plot makes no sense at all, and the actors seem to know it."]
    validation = ["an entertaining   FILM.", "A touching examination of the ravages of Parkinson's disease.",
                  "The plot makes no sense at all -- and the actors seem to know it!", "Nothing like the others here."]
    found = {i: j for i, j, _ in quality.duplicates(signed(validation), signed(train))}
    assert found == {0: 1, 1: 0, 2: 2}


def test_duplicates_within_one_set():
    texts = ["Thank you.", "thank  you.", "Something else entirely", "THANK YOU"]
    pairs = {(i, j) for i, j, _ in quality.duplicates(signed(texts))}
    assert pairs == {(0, 1), (0, 3)}


def test_text_fingerprints_are_held_compactly_and_find_what_dense_rows_find(monkeypatch):
    """200,000 reviews' fingerprints were held as dense rows of 4,096 floats: 3.3 GB, 6.5 GB while stacked and
    more while normalised, where the run's features take 300 MB. They are held as 4-gram buckets and counted a
    block of rows at a time; the rows and the copies found are those of the dense vectors, computed here apart."""
    import re

    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "actors", "slow", "funny", "moving", "dull", "score", "the", "a", "été"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 15))) for _ in range(1500)] + ["", "!!!", "Good film.", "ä"]
    texts[17] = texts[5] + " indeed"  # a near copy
    factors, mix = [int(f) for f in quality._GRAM_FACTORS], int(quality._MIX)

    def dense(text):  # gram by gram, in Python integers: the hash the blocks of texts compute at once
        normal = " " + " ".join(re.sub(r"\W+", " ", text.casefold()).split()) + " "
        normal += "\0" * (4 - len(normal))  # an empty text or a one-letter word is one gram
        counts = np.zeros(4096, np.float32)
        for i in range(len(normal) - 3):
            gram = sum(ord(c) * f for c, f in zip(normal[i:i + 4], factors)) % 2**64
            counts[(gram * mix % 2**64) >> 52] += 1
        return torch.nn.functional.normalize(torch.from_numpy(counts), dim=0)

    monkeypatch.setattr(quality, "_HASH_BLOCK", 600)  # hashed in blocks of 600 texts: rows across blocks
    prints = quality.fingerprints(texts)
    held = sum(t.nbytes for t in vars(prints).values()) if not isinstance(prints, torch.Tensor) else prints.nbytes
    assert held < len(texts) * 4096 * 4 / 50
    expected = torch.stack([dense(t) for t in texts])
    assert torch.allclose(prints[:], expected) and torch.allclose(prints[100:205], expected[100:205])
    assert len(prints[7:3]) == 0
    found = quality.near_duplicates(prints, threshold=0.8)
    assert (5, 17, pytest.approx(float(expected[5] @ expected[17]))) in found
    assert found == quality.near_duplicates(expected, threshold=0.8)
    monkeypatch.setattr(quality, "_CHUNK", 4096 * 200)  # blocks of 200 rows: the same pairs across blocks
    assert [p[:2] for p in quality.near_duplicates(prints, threshold=0.8)] == [p[:2] for p in found]
    queries = texts[:40]
    assert quality.near_duplicates(quality.fingerprints(queries), prints, 0.8) == \
        quality.near_duplicates(expected[:40], expected, 0.8)


def test_empty_inputs():
    assert quality.duplicates(signed([]), signed(["a"])) == [] and quality.duplicates(signed(["a"]), signed([])) == []
    assert quality.near_duplicates(torch.zeros(0, 4), torch.randn(3, 4)) == []


def test_principal_components_of_features_wider_than_they_are_long_match_the_usual_ones():
    """Whole token sequences (Dinov2's 257 x 768 an image) are far wider than a training set is long: the N x N Gram
    matrix gives the same components (up to each one's sign) where D x D would not fit in memory."""
    generator = torch.Generator().manual_seed(0)
    wide = torch.randn(40, 12, generator=generator) @ torch.randn(12, 500, generator=generator)
    assert wide.shape[1] > wide.shape[0]
    found = quality.principal_components(wide, 8)
    standardised = (wide - wide.mean(0)) / (wide.std(0) + 1e-6)
    _, vectors = torch.linalg.eigh(standardised.T @ standardised)
    usual = standardised @ vectors[:, -8:]
    signs = torch.sign((found * usual).sum(0))
    assert found.shape == (40, 8) and torch.allclose(found * signs, usual, atol=1e-3, rtol=1e-3)
