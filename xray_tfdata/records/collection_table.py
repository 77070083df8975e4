"""Which collection each class comes from: the build's collection x class table and its warning.

When a class comes only from collections that hold no other class (the Kaggle set's COVID19:
adult collections without normals; its NORMAL and PNEUMONIA: one paediatric collection), the
collection alone predicts that class, and a CNN can learn the film, the exposure or the text
markers of a collection instead of the disease. Training cannot tell the two apart; the
evaluation's shortcut probe and Grad-CAM border attention find it afterwards. This module says it
at build time, from the manifest's `splits.<split>.per_source` counts alone (pure, no TF).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from xray_tfdata.records import manifest as manifest_lib

TOTAL = "total"


def counts(manifest: manifest_lib.DatasetInfo | Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """{collection: {class: records over every split}}; {} for records of one unnamed
    collection (no per_source)."""
    out: dict[str, dict[str, int]] = {}
    for info in manifest_lib.as_info(manifest).splits.values():
        for name, per_class in info.per_source.items():
            row = out.setdefault(name, {})
            for cls, n in per_class.items():
                row[cls] = row.get(cls, 0) + int(n)
    return dict(sorted(out.items()))


def format_table(table: dict[str, dict[str, int]], class_names: Sequence[str]) -> str:
    """The collection x class table, a total row and column, fixed width."""
    width = max([len(TOTAL), len("collection")] + [len(name) for name in table])
    cols = [max(len(cls), 7) for cls in class_names]
    header = f"{'collection':<{width}}  " + "  ".join(
        f"{cls:>{w}}" for cls, w in zip(class_names, cols)) + f"  {TOTAL:>7}"
    lines = [header]
    rows = {**table, TOTAL: {cls: sum(t.get(cls, 0) for t in table.values())
                             for cls in class_names}}
    for name, row in rows.items():
        values = [int(row.get(cls, 0)) for cls in class_names]
        lines.append(f"{name:<{width}}  " + "  ".join(
            f"{v:>{w}}" for v, w in zip(values, cols)) + f"  {sum(values):>7}")
    return "\n".join(lines)


def _either(names: Sequence[str]) -> str:
    """'A', 'A or B', 'A, B or C'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def confound_warnings(table: dict[str, dict[str, int]], class_names: Sequence[str]) -> list[str]:
    """One line per class all of whose images come from collections holding no other class
    (with at least two collections and two classes in the build: otherwise there is nothing to
    confound), e.g. "COVID19: all 199 images from covid_a, covid_b, which hold no NORMAL or
    PNEUMONIA: a model can learn the collection"."""
    if len(table) < 2:
        return []
    present = [cls for cls in class_names if any(row.get(cls, 0) for row in table.values())]
    warnings = []
    for cls in present:
        holding = [name for name, row in table.items() if row.get(cls, 0)]
        others = [c for c in present if c != cls]
        if not others or any(table[name].get(c, 0) for name in holding for c in others):
            continue
        total = sum(table[name][cls] for name in holding)
        warnings.append(f"{cls}: all {total} images from {', '.join(holding)}, which hold no "
                        f"{_either(others)}: a model can learn the collection")
    return warnings


def build_report(manifest: manifest_lib.DatasetInfo | Mapping[str, Any]) -> list[str]:
    """What build_records prints after a multi-collection build: the table, then one
    'WARNING: ...' line per confounded class; [] for a single collection (quiet)."""
    info = manifest_lib.as_info(manifest)
    table = counts(info)
    if len(table) < 2:
        return []
    names = info.classes
    variants = sum(sum(split.variants_per_class.values()) for split in info.splits.values())
    title = "Records per collection and class (every split" + (
        f"; {variants} offline-augmented variants included)" if variants else ")") + ":"
    lines = [title, format_table(table, names)]
    lines += [f"WARNING: {w} (evaluate's shortcut probe and python -m xray_tfdata.loco measure "
              f"it)." for w in confound_warnings(table, names)]
    return lines
