"""Omniglot tasks: MAML's split of the characters and the N-way K-shot task sampler.

``split_characters`` shuffles the 1623 characters (with a fixed seed) and cuts them into
1100 meta-train, 100 meta-validation and 423 meta-test characters (MAML's protocol).
``TaskSampler`` draws batches of N-way K-shot tasks from one split, in NHWC layout: each
task picks N classes, then K support and Q query drawings of each. With ``rotations=True``
each character gives 4 classes (rotated by 0/90/180/270 degrees), which stay in the
character's split. The images come from ``numpy_amaml.omniglot.load_omniglot``.

Host NumPy arrays throughout; training code moves each batch to the device once.
"""
import copy

import numpy as np


def _count(size, num_characters, what):
    """A split size given as a count (int) or a fraction of all characters (float in [0, 1])."""
    if isinstance(size, float):
        if not 0.0 <= size <= 1.0:
            raise ValueError(f"{what} fraction must be in [0, 1], got {size}")
        return int(round(size * num_characters))
    return int(size)


def split_characters(num_characters, seed=0, n_train=1100, n_val=100):
    """Shuffle the characters with ``seed`` and cut them into meta-train/val/test index arrays.

    n_train, n_val: counts (int) or fractions of ``num_characters`` (float); meta-test gets
    the rest (423 for Omniglot's 1623 with the defaults). Returns {"train", "val", "test"}:
    sorted int64 arrays of character indices, pairwise disjoint, covering every character.
    """
    train = _count(n_train, num_characters, "n_train")
    val = _count(n_val, num_characters, "n_val")
    if train < 1 or val < 0 or train + val >= num_characters:
        raise ValueError(
            f"cannot split {num_characters} characters into {train} meta-train, {val} "
            f"meta-validation and at least 1 meta-test character; pass smaller n_train / n_val "
            f"(counts or fractions) for a small dataset")
    order = np.random.default_rng(seed).permutation(num_characters)
    return {"train": np.sort(order[:train]),
            "val": np.sort(order[train:train + val]),
            "test": np.sort(order[train + val:])}


def _check_sampler_arguments(images, characters, ways, shots, queries, num_rotations):
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (characters, drawings, H, H), got {images.shape}")
    if characters.ndim != 1 or not np.all((0 <= characters) & (characters < len(images))):
        raise ValueError(f"split_indices must be a 1-D array of indices into the "
                         f"{len(images)} characters")
    if min(ways, shots, queries) < 1:
        raise ValueError(f"ways, shots and queries must be >= 1, got {ways}, {shots}, {queries}")
    num_classes = len(characters) * num_rotations
    if ways > num_classes:
        raise ValueError(f"{ways}-way tasks need {ways} classes, but this split has only {num_classes} "
                         f"({len(characters)} characters x {num_rotations} rotations)")
    if shots + queries > images.shape[1]:
        raise ValueError(f"shots + queries = {shots + queries} exceeds the {images.shape[1]} "
                         f"drawings per character")


class TaskSampler:
    """Draws batches of N-way K-shot classification tasks from one split.

    A class is a (character, rotation) pair when ``rotations`` is True (rotations by
    0/90/180/270 degrees counter-clockwise), else a character. Per task: ``ways`` distinct
    classes in random order (label i = i-th drawn class), and for each class ``shots``
    support and ``queries`` query drawings, all distinct. Examples are grouped by label.

    images:        float (num_characters, drawings, H, H), e.g. ``OmniglotData.images``
    split_indices: character indices of one split, e.g. ``split_characters(...)["train"]``
    seed:          seed of the sampler's own numpy Generator

    The split's images are rotated once here and kept as ``class_images`` (num_classes,
    drawings, H, H), class ``num_rotations * i + k`` = split character i rotated by k * 90
    degrees; for Omniglot's 1100 meta-train characters that is 276 MB, built in about a
    second, and each batch is then one gather.
    """

    def __init__(self, images, split_indices, ways, shots, queries, seed=0, rotations=True):
        images = np.asarray(images, dtype=np.float32)
        self.characters = np.asarray(split_indices, dtype=np.int64)
        self.ways, self.shots, self.queries = ways, shots, queries
        self.num_rotations = 4 if rotations else 1
        _check_sampler_arguments(images, self.characters, ways, shots, queries, self.num_rotations)
        split_images = images[self.characters]                                # (n, drawings, H, H)
        rotated = [np.rot90(split_images, k, axes=(-2, -1)) for k in range(self.num_rotations)]
        self.class_images = np.stack(rotated, axis=1).reshape(-1, *images.shape[1:])
        self.rng = np.random.default_rng(seed)

    @property
    def num_classes(self):
        return len(self.class_images)

    def sample(self, batch_size):
        """Draw ``batch_size`` tasks.

        Returns x_support float32 (B, ways*shots, H, H, 1), y_support int64 (B, ways*shots),
        x_query float32 (B, ways*queries, H, H, 1), y_query int64 (B, ways*queries);
        labels are 0..ways-1, each ``shots`` (``queries``) times, grouped by label.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # ways distinct classes per task; Generator.choice returns them in random order,
        # so which class gets label 0, 1, ... is a random permutation.
        classes = np.stack([self.rng.choice(self.num_classes, self.ways, replace=False)
                            for _ in range(batch_size)])                      # (B, ways)
        # The head of a random permutation of the drawings: support and query never share one.
        keys = self.rng.random((batch_size, self.ways, self.class_images.shape[1]))
        drawings = np.argsort(keys, axis=2)                                   # (B, ways, drawings)
        support = self.class_images[classes[..., None], drawings[:, :, :self.shots]]
        query_drawings = drawings[:, :, self.shots:self.shots + self.queries]
        query = self.class_images[classes[..., None], query_drawings]
        side = self.class_images.shape[-1]
        labels = np.arange(self.ways, dtype=np.int64)
        return (support.reshape(batch_size, -1, side, side, 1),
                np.tile(np.repeat(labels, self.shots), (batch_size, 1)),
                query.reshape(batch_size, -1, side, side, 1),
                np.tile(np.repeat(labels, self.queries), (batch_size, 1)))

    def get_state(self):
        """The generator state as a JSON-serialisable dict (for resuming training)."""
        return copy.deepcopy(self.rng.bit_generator.state)

    def set_state(self, state):
        """Restore a state returned by ``get_state``."""
        self.rng.bit_generator.state = copy.deepcopy(state)
