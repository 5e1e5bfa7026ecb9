"""The data-quality pass: likely label errors and duplicates, found from what a run already has.

Label errors: confident learning (Northcutt et al. 2021) over out-of-fold predicted probabilities. The probabilities
come from linear heads (multinomial logistic regression) trained on the frozen base's cached features, one per fold:
the base pass is already paid for, and a linear head is what the head stage trains. The features are standardised
and projected on their first `LABEL_ISSUE_DIMS` principal components (found without labels, so the folds stay
honest), which makes the heads fast (10,000 x 1,280 in seconds on 2 cores) and, with strong L2, a little better
calibrated. Confident learning counts the examples whose given label is contradicted by a confidently predicted
other class (the off-diagonal of the confident joint) and flags that many examples of lowest self-confidence
(cleanlab's `low_self_confidence` filter): the count comes from the joint, the ranking from p(given label).

Duplicates: exact copies by content (`content_key`: file bytes, casefolded whitespace-collapsed text), near copies
by cosine similarity of fingerprints (`fingerprints`). For images the fingerprint is the picture itself, shrunk to
32 x 32 grey levels and blurred, not the base's features: a classifier's features are trained to be alike for
different items of one kind, and on Fashion-MNIST a training image re-encoded as a 21-px JPEG was less like its
original (cosine 0.79) than 1% of unrelated validation images were like their nearest training image (0.95): half
the copies would be missed at a 1% false-report rate, against none with the thumbnails (benchmarks/data_quality.py).
For texts it is the character 4-grams of the normalised text (case, punctuation and spacing removed), hashed into
4,096 counts: a changed word leaves most 4-grams in place, while sentence embeddings of short texts move far with
one word (all-MiniLM-L6-v2: down to 0.53 for a three-word review with a word changed).

Outliers are not scored: the measurement did not show it worth a third list. 40 planted out-of-place images (scikit-
learn digits, patches of photos, each in a random class folder) among 2,000 Fashion-MNIST training images: the label
issues already held 24 and 27 of them (two sets), since an item of no class sits badly in the class it was given; the
best plain outlier score tried (mean cosine distance to the 10 nearest training rows of the base's features) put 20
and 21 of them in its top 40, half its list being ordinary garments, and added 8 that the label issues missed while
missing nearly all the digits (which MobileNetV2 sees as garment-like shapes). A user would read 40 more rows to find 8.

Everything here is torch, numpy and PIL on plain tensors and values; the run, the report and `hftransfer check`
wire it to the data (`data_quality`).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from typing import NamedTuple

import numpy as np
import torch

from .hardware import thread_map
from .pixels import to_rgb

# Measured in benchmarks/results/data_quality.json (Fashion-MNIST at zoo:mobilenet_v2, Rotten Tomatoes and the 2016
# debates at zoo:all-MiniLM-L6-v2; chosen on seed 0, checked on seeds 1-3).
LABEL_ISSUE_DIMS = 128  # principal components for the fold heads: 64, 128, 256 and all 1,280 within 0.02 of
# top-200 precision on Fashion-MNIST (0.86-0.89); 128 also best on the reviews (0.41 against 0.39 for all 384)
LABEL_ISSUE_L2 = 0.3  # L2 on the weights, per mean cross-entropy: 0.01 gave top-K precision 0.79, 0.1 0.86, 0.3 0.88,
# 1.0 0.87 on Fashion-MNIST; stronger also converged in fewer steps
LABEL_ISSUE_STEPS = 30  # L-BFGS iterations per fold: 60 gave the same precision as 30 at twice the time
IMAGE_NEAR_DUPLICATE_THRESHOLD = 0.9985  # image fingerprints. Seed 0: training images re-encoded as JPEG at 20-60 px,
# quality 50-95, at 1 - cosine <= 0.0003 from their original but for one at 0.0023; an unrelated validation image's
# nearest training image at >= 0.0021 (the closest: Fashion-MNIST's own repeated product photos). Seeds 1-3: recall
# 1.0, 1.0, 0.96 of the copies, 0, 0, 2 of 950 other validation images reported
TEXT_NEAR_DUPLICATE_THRESHOLD = 0.8  # text fingerprints. Seed 0: copies with a word changed >= 0.70 (three-word
# texts), most >= 0.85; unrelated reviews' nearest training text <= 0.77 (p99 0.48). Seeds 1-3: recall 0.98-0.99,
# none of 1,900 other reviews reported; a word changed in a one-word text is a new text, and is missed
NEAR_DUPLICATE_THRESHOLD = IMAGE_NEAR_DUPLICATE_THRESHOLD
FINGERPRINT_SIZE = 32  # image fingerprint side, pixels
FINGERPRINT_BLUR = 1.5  # Gaussian blur radius, pixels at FINGERPRINT_SIZE: evens out resampling and JPEG blocks
TEXT_GRAMS, TEXT_BUCKETS = 4, 4096
_CHUNK = 1 << 24  # similarities, or values of a block of rows, computed at once: at most this many (64 MB of float32)
_TIE = 1e-6  # cosine similarities this close are the same (float32 rounding)


# ---------------------------------------------------------------- label issues

def label_issues(features: torch.Tensor, labels: torch.Tensor, num_classes: int, folds: int = 5,
                 seed: int = 0) -> list[dict]:
    """Confident learning over out-of-fold probabilities from linear heads trained on `folds` stratified folds.

    Returns `[{"row", "given", "suggested", "score"}, ...]` for the flagged examples, most likely wrong first;
    `score` is 1 - p(given label) out of fold, `suggested` the most probable other class. Examples of a class with
    fewer than `folds` examples are not scored (their class could not be held out in every fold and still be
    learnt); they still train every fold's head, and their class can be suggested for others.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    scored = counts[labels] >= max(folds, 2)
    if len(labels) < 2 * folds or (counts >= max(folds, 2)).sum() < 2:
        return []
    probs = out_of_fold_probabilities(features, labels, num_classes, folds, seed, scored)
    rows = torch.nonzero(scored).flatten()
    flagged = _low_self_confidence(probs[rows], labels[rows], num_classes)
    given = labels[rows[flagged]]
    self_confidence = probs[rows[flagged], given]
    others = probs[rows[flagged]].scatter(1, given[:, None], -1.0)
    return [{"row": int(r), "given": int(g), "suggested": int(s), "score": float(1 - c)}
            for r, g, s, c in zip(rows[flagged], given, others.argmax(1), self_confidence)]


def out_of_fold_probabilities(features: torch.Tensor, labels: torch.Tensor, num_classes: int, folds: int = 5,
                              seed: int = 0, scored: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C) probabilities, each row from a head that did not see it; rows not `scored` are in every training
    fold and get none (zeros)."""
    x = principal_components(features, LABEL_ISSUE_DIMS)
    fold = stratified_folds(labels, folds, seed, scored)
    probs = torch.zeros(len(labels), num_classes)
    for k in range(folds):
        held = fold == k
        if held.any():
            weight, bias = fit_logistic(x[~held], labels[~held], num_classes)
            probs[held] = torch.softmax(x[held] @ weight + bias, dim=1)
    return probs


def principal_components(features: torch.Tensor, dims: int) -> torch.Tensor:
    """Standardised features on their first `dims` principal components (all of them where there are fewer)."""
    x = features.detach().float().cpu()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    if dims >= min(x.shape):
        return x
    if x.shape[1] <= x.shape[0]:
        _, vectors = torch.linalg.eigh(x.T @ x)  # exact and deterministic; D x D (768 to 2,048 for most bases)
        return x @ vectors[:, -dims:]
    # wider than it is long (a base whose head reads a whole token sequence: 197 x 768 numbers an image for a
    # ViT-base-sized Dinov2): the N x N Gram matrix has the same components, x v = u sqrt(eigenvalue), where D x D
    # would not fit in memory (D = 151,296: 92 GB)
    values, vectors = torch.linalg.eigh(x @ x.T)
    return vectors[:, -dims:] * values[-dims:].clamp(min=0).sqrt()


def stratified_folds(labels: torch.Tensor, folds: int, seed: int, scored: torch.Tensor | None = None) -> torch.Tensor:
    """Each example's fold, 0..folds-1, dealt round-robin within its class after a seeded shuffle; -1 for rows not
    `scored` (they train in every fold)."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.full((len(labels),), -1, dtype=torch.long)
    for c in torch.unique(labels):
        rows = torch.nonzero((labels == c) & (scored if scored is not None else True)).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        fold[rows] = torch.arange(len(rows)) % folds
    return fold


def fit_logistic(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, full batch, L-BFGS: mean cross-entropy + LABEL_ISSUE_L2 * |W|^2."""
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=LABEL_ISSUE_STEPS, history_size=10,
                                  line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weight + bias, labels) + LABEL_ISSUE_L2 * weight.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    return weight.detach(), bias.detach()


def _low_self_confidence(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows to flag, most likely wrong first: as many as the confident joint's off-diagonal counts, taken by lowest
    p(given label). A class's threshold is its examples' mean p(class); an example confidently belongs to the most
    probable class at or above its threshold, and counts when that is not its given class."""
    present = torch.bincount(labels, minlength=num_classes) > 0
    thresholds = torch.full((num_classes,), float("inf"))
    for c in torch.nonzero(present).flatten():
        thresholds[c] = probs[labels == c, c].mean()
    above = probs >= thresholds
    confident = torch.where(above, probs, torch.tensor(-1.0)).argmax(1)
    count = int((above.any(1) & (confident != labels)).sum())
    self_confidence = probs.gather(1, labels[:, None]).squeeze(1)
    return torch.argsort(self_confidence, stable=True)[:count]


# ---------------------------------------------------------------- duplicates

def near_duplicates(query, reference=None, threshold: float = NEAR_DUPLICATE_THRESHOLD) -> list[tuple[int, int, float]]:
    """Pairs (i, j, cosine similarity) at or above `threshold`, most similar first. With `reference` None, within
    `query`: each row j with the earlier row i it is most like (a tie: the first), so n copies of one row are n - 1
    pairs, not n(n - 1)/2 (2,000 repeats of "thank you" were two million); else each query row i with its best
    reference row j (a tie: the first), if close enough. `query` and `reference` are (N, F) tensors or
    `TextPrints`, read a block of rows at a time, so 100,000 x 100,000 never builds the whole matrix. The threshold
    belongs to the vectors: see the constants."""
    within = reference is None
    r = query if within else reference
    width = query.shape[1]  # a block of rows is densified and normalised: at most _CHUNK values too
    step_q = max(1, min(len(query), 4096, _CHUNK // width))
    step_r = max(1, min(_CHUNK // step_q, _CHUNK // width))
    best = torch.full((len(r) if within else len(query),), -2.0)  # within: by row j; else by query row i
    best_at = torch.zeros(len(best), dtype=torch.long)
    for start in range(0, len(query), step_q):
        block = _unit_rows(query, start, start + step_q)
        for ref_start in range(start if within else 0, len(r), step_r):
            sims = block @ _unit_rows(r, ref_start, ref_start + step_r).T
            if within:  # only earlier rows: row i < column j
                rows = torch.arange(start, start + len(block))[:, None]
                cols = torch.arange(ref_start, ref_start + sims.shape[1])[None, :]
                _keep_best(best, best_at, ref_start, sims.masked_fill(cols <= rows, -2.0).T, start)
            else:
                _keep_best(best, best_at, start, sims, ref_start)
    found = torch.nonzero(best >= threshold).flatten().tolist()
    pairs = [(int(best_at[n]), n) if within else (n, int(best_at[n])) for n in found]
    return sorted(((i, j, min(1.0, float(best[j if within else i]))) for i, j in pairs),
                  key=lambda p: (-p[2], p[0], p[1]))


def _keep_best(best: torch.Tensor, best_at: torch.Tensor, first: int, sims: torch.Tensor, offset: int) -> None:
    """Each row of `sims` (rows `first`... of `best`) keeps its most similar column (`offset`...) where it beats
    what an earlier block found. Values within `_TIE` of each other are a tie, won by the first: the same pair of
    rows gives values a float's last digits apart in blocks of other shapes."""
    top = sims.max(1).values
    at = (sims >= top[:, None] - _TIE).float().argmax(1)  # the first column within a tie of the best
    value = sims.gather(1, at[:, None]).squeeze(1)
    kept, kept_at = best[first:first + len(sims)], best_at[first:first + len(sims)]
    better = value > kept + _TIE
    kept.copy_(torch.where(better, value, kept))
    kept_at.copy_(torch.where(better, at + offset, kept_at))


def _unit_rows(vectors, start: int, stop: int) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors[start:stop].detach().float().cpu(), dim=1)


def content_key(value) -> str:
    """A key equal for exact copies: an image's file bytes (a `datasets` Image(decode=False) dict, a path given as
    `os.PathLike`), a PIL image's pixels, or a text (`str`) casefolded with its whitespace collapsed."""
    if isinstance(value, str):
        return "text:" + " ".join(value.casefold().split())
    if hasattr(value, "tobytes") and hasattr(value, "mode"):  # a PIL image
        return "pixels:" + hashlib.sha256(f"{value.mode}{value.size}".encode() + value.tobytes()).hexdigest()
    return "bytes:" + hashlib.sha256(_image_bytes(value)).hexdigest()


def exact_duplicates(query_keys: list[str], reference_keys: list[str] | None = None) -> list[tuple[int, int]]:
    """Pairs of equal keys: within `query_keys`, each repeat j with the first row i of its key (i, j); with
    `reference_keys`, each query row i with the first reference row j of its key (i, j)."""
    first: dict[str, int] = {}
    for j, key in enumerate(query_keys if reference_keys is None else reference_keys):
        first.setdefault(key, j)
    if reference_keys is None:
        return [(first[key], j) for j, key in enumerate(query_keys) if first[key] != j]
    return [(i, first[key]) for i, key in enumerate(query_keys) if key in first]


def fingerprints(values):
    """Vectors whose cosine similarity finds near copies, one per value, and a row block of them (`[a:b]`) a dense
    (rows, F) tensor: texts (`str`) by their character 4-grams (`TextPrints`), images (as `content_key` takes them)
    by a small blurred grey thumbnail. Compare with the kind's threshold."""
    if len(values) and isinstance(values[0], str):
        return TextPrints(values)
    prints = torch.empty(len(values), FINGERPRINT_SIZE * FINGERPRINT_SIZE)
    for row, vector in enumerate(thread_map(image_fingerprint, values)):  # in place: a stack held the rows twice
        prints[row] = vector
    return prints


def image_fingerprint(value) -> torch.Tensor:
    from PIL import Image, ImageFilter

    image = value if hasattr(value, "convert") else Image.open(io.BytesIO(_image_bytes(value)))
    small = to_rgb(image).convert("L").resize((FINGERPRINT_SIZE, FINGERPRINT_SIZE), Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(small.filter(ImageFilter.GaussianBlur(FINGERPRINT_BLUR)), np.float32))
    pixels = pixels.flatten() - pixels.mean()  # brightness and contrast changes leave the direction alone
    return torch.nn.functional.normalize(pixels, dim=0)


def _normal_text(text: str) -> str:
    """Case, punctuation and spacing removed, a space at each end (a 4-gram sees where words start and end), filled
    to one 4-gram with NULs (an empty text or a one-letter word is one gram)."""
    return (" " + " ".join(re.sub(r"\W+", " ", text.casefold()).split()) + " ").ljust(TEXT_GRAMS, "\0")


# Multiply-shift hashing of a 4-gram's code points, top 12 bits: the same buckets for the same 4-gram in any text,
# computed for every window of a block of texts at once (zlib.crc32 of each gram, a Python call each, took 7.1 s for
# 200,000 review-like texts, this 2.3 s: benchmarks/fingerprint_memory.py)
_GRAM_FACTORS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], np.uint64)
_MIX, _BUCKET_SHIFT = np.uint64(0xFF51AFD7ED558CCD), np.uint64(64 - (TEXT_BUCKETS - 1).bit_length())  # a power of 2
_HASH_BLOCK = 10_000  # texts hashed together: their code points' temporaries stay small


def _text_buckets(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The texts' 4-gram counts (one gram a character, at least one a text) and their grams' buckets, in order."""
    normals = [_normal_text(text) for text in texts]
    lengths = np.fromiter(map(len, normals), np.int64, len(normals))
    codes = np.frombuffer("".join(normals).encode("utf-32-le"), np.uint32).astype(np.uint64)
    windows = len(codes) - TEXT_GRAMS + 1
    mixed = np.zeros(windows, np.uint64)
    for k, factor in enumerate(_GRAM_FACTORS):  # uint64 products wrap, as the hash means them to
        mixed += codes[k:k + windows] * factor
    every = ((mixed * _MIX) >> _BUCKET_SHIFT).astype(np.int16)  # windows across two texts are dropped below
    counts = lengths - TEXT_GRAMS + 1
    starts = np.cumsum(lengths) - lengths
    first_gram = np.cumsum(counts) - counts
    return counts, every[np.arange(counts.sum()) + np.repeat(starts - first_gram, counts)]


class TextPrints:
    """Texts' fingerprints held as their 4-grams' bucket numbers (about one a character, 2 bytes each) and counted
    into dense unit rows a block at a time (`prints[a:b]`): 200,000 short texts as dense rows of 4,096 floats took
    6.5 to 9.5 GB while built and searched, beside a run's 300 MB of features (benchmarks/fingerprint_memory.py)."""

    def __init__(self, texts):
        texts = list(texts)
        blocks = [_text_buckets(texts[start:start + _HASH_BLOCK]) for start in range(0, len(texts), _HASH_BLOCK)]
        counts = np.concatenate([np.zeros(1, np.int64), *(counts for counts, _ in blocks)])
        self.offsets = torch.from_numpy(np.cumsum(counts))
        self.buckets = torch.from_numpy(np.concatenate([np.zeros(0, np.int16), *(grams for _, grams in blocks)]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), TEXT_BUCKETS

    def __getitem__(self, rows: slice) -> torch.Tensor:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"TextPrints are read by a block of rows ([a:b]), not by {rows!r}")
        start, stop, _ = rows.indices(len(self))
        stop = max(start, stop)
        lengths = self.offsets[start + 1:stop + 1] - self.offsets[start:stop]
        row_of = torch.repeat_interleave(torch.arange(stop - start), lengths)
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        counts = torch.zeros(stop - start, TEXT_BUCKETS)
        counts.index_put_((row_of, self.buckets[first:last].long()), torch.ones(last - first), accumulate=True)
        return torch.nn.functional.normalize(counts, dim=1)


class Signatures(NamedTuple):
    """What duplicates are found by, computed once per split: content keys, fingerprints and their kind's threshold."""

    keys: list[str]
    prints: torch.Tensor | TextPrints
    threshold: float

    @classmethod
    def of(cls, values) -> Signatures:
        prints = fingerprints(values)
        return cls([content_key(v) for v in values], prints,
                   TEXT_NEAR_DUPLICATE_THRESHOLD if isinstance(prints, TextPrints) else IMAGE_NEAR_DUPLICATE_THRESHOLD)


def duplicates(query: Signatures, reference: Signatures | None = None,
               near: bool = True) -> list[tuple[int, int, float]]:
    """Exact and near copies together, as `near_duplicates` returns them (exact copies at similarity 1.0): within
    `query` (each row once, with its first exact copy, else the earlier row it is most like), or each query row
    against `reference` (once). `near` False: exact copies only."""
    if not query.keys or (reference is not None and not reference.keys):
        return []
    within = reference is None
    exact = exact_duplicates(query.keys, None if within else reference.keys)
    found = {(j if within else i): (i, j, 1.0) for i, j in exact}  # by the row reported once
    if near:
        for i, j, similarity in near_duplicates(query.prints, None if within else reference.prints, query.threshold):
            found.setdefault(j if within else i, (i, j, similarity))
    return sorted(found.values(), key=lambda p: (-p[2], p[0], p[1]))


def _image_bytes(value) -> bytes:
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value["path"]
    if isinstance(value, (os.PathLike, str)):
        with open(value, "rb") as file:
            return file.read()
    raise TypeError(f"not an image: {type(value).__name__}")
