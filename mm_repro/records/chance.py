"""When a run is at chance level: one rule for every number of classes (docs/trust.md, "Verdicts"). A run at chance is
listed apart by `tables` and by `flattening`, never averaged or tested."""

from __future__ import annotations

from mm_repro.data import DATASETS

CHANCE_ALPHA = 0.001  # a run has learned when its accuracy is above chance at this one-sided p-value


def test_images(result: dict) -> int | None:
    """The number of test images a result was measured on: its data fingerprint's ("N images, sha256 ..."); for a
    record of a version that did not keep it, the dataset's test set (its share for the classes kept); else None."""
    data = result.get("data") if isinstance(result.get("data"), dict) else {}
    words = str(data.get("test", "")).split(" ", 1)
    if words[0].isdigit():
        return int(words[0])
    known = DATASETS.get(result["run"].get("dataset"))
    classes = classes_of(result)
    if not known or not known.classes or not classes:
        return None
    return known.test * classes // known.classes


def classes_of(result: dict) -> int | None:
    """The classes a run was trained and tested on: those `dataset.classes` keeps, else the dataset's."""
    config = result.get("config") if isinstance(result.get("config"), dict) else {}
    kept = config.get("dataset", {}).get("classes") if isinstance(config.get("dataset"), dict) else None
    run = result["run"]
    spec = DATASETS.get(run["dataset"])
    return len(kept) if kept else run.get("num_classes") or (spec.classes if spec else None)


def chance_level(accuracy: float, classes: int, images: int | None) -> bool:
    """Is a test accuracy (%) over `images` test images of `classes` classes at chance? It is, unless a one-sided
    binomial test of its correct answers against 1/C rejects chance at p < CHANCE_ALPHA: the same rule at 2 classes
    or 200, and it knows that 60 % of 50 two-class images is chance while 60 % of 2000 is not. With the test set's
    size unknown, at chance unless above 1/C."""
    if images is None or images < 1:
        return accuracy <= 100.0 / classes
    from scipy import stats

    correct = round(images * accuracy / 100.0)
    return bool(stats.binomtest(correct, images, 1.0 / classes, alternative="greater").pvalue >= CHANCE_ALPHA)


def at_chance(result: dict) -> bool:
    """A result.json's final test accuracy at chance by `chance_level`, over the classes the run kept (Figure 5's
    digits 0-4: 5, chance 20 %) and its own test set."""
    classes = classes_of(result)
    return bool(classes) and chance_level(100.0 - result["final"]["test_error"], classes, test_images(result))
