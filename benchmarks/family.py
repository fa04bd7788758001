"""The rest of the analytic family on real pretrained features: closed-form continual peers (RanPAC, NCM, FeCAM),
federated continual learning (AFCL), personalized federated learning (AnaPFL) with Fed3R, and multi-label
class-incremental learning (L3A), each next to the baselines its paper compares against.

``python -m benchmarks family [--quick] [--sections prototypes,afcl,apfl,l3a]`` (``--render RECORD.json`` prints a
record's tables as Markdown)

Data (all offline, the same features as ``python -m benchmarks real``): Fashion-MNIST from Debian
``dataset-fashion-mnist`` through the frozen EfficientNet-Lite0 (1280-d pooled features at 64×64), the 45 WordNet
supersenses from Debian ``wordnet-base`` through all-MiniLM-L6-v2 (384-d), and for L3A 2×2 mosaics of
Fashion-MNIST items (multi-label: the set of item classes) through the same EfficientNet. Sizes: ``--quick``
6,000/2,000 Fashion images, ≤ 150 synsets per class; full 30,000/10,000 and ≤ 600 (``--fashion-train`` etc.).

Each section lives in ``benchmarks/_family_<section>.py`` with ``run(data, quick, out_dir, stem) -> dict`` and
``render(section) -> str``; the record ``family[_quick].json`` holds every section's rows, its published claims
beside ours (thresholds fixed in the section's code) and the names of its plots.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import parser, print_table, write_results

SECTIONS = ("prototypes", "afcl", "apfl", "l3a")
#: mosaic set sizes (train, test) for the multi-label section.
MOSAICS = {"quick": (4000, 1000), "full": (12000, 3000)}


CLAIM_COLUMNS = ("method", "claim", "published", "ours", "holds", "source")


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).replace("|", "\\|")


def render_claims(section: dict[str, Any]) -> list[str]:
    """The Markdown every section ends with: its claims table (published beside ours), notes and plots."""
    lines = ["", "| " + " | ".join(CLAIM_COLUMNS) + " |", "|" + "---|" * len(CLAIM_COLUMNS)]
    lines += ["| " + " | ".join(_cell(c.get(k, "")) for k in CLAIM_COLUMNS) + " |" for c in section.get("claims", [])]
    lines += [""] + [f"- {n}" for n in section.get("notes", [])]
    lines += [f"![{p}]({p})" for p in section.get("plots", [])]
    return lines


def section_module(name: str) -> Any:
    return importlib.import_module(f"benchmarks._family_{name}")


def load_data(args: Any, sections: list[str]) -> dict[str, dict[str, Any]]:
    """The real-feature sets of ``benchmarks.real`` and, if L3A runs, the multi-label mosaics."""
    from benchmarks.real import load_features

    data = load_features(args)
    if "l3a" in sections:
        from continual.data.mosaics import fashion_mosaic_features

        train, test = (args.mosaic_train, args.mosaic_test)
        t0 = time.perf_counter()
        split = fashion_mosaic_features(train=train, test=test, cache_dir=args.cache)
        data["fashion-mosaic/effnet-lite0"] = {
            "split": split, "seconds": time.perf_counter() - t0,
            "source": f"2x2 mosaics of Debian dataset-fashion-mnist items, {train}/{test} mosaics (training mosaics "
                      "from training images only), EfficientNet-Lite0 ImageNet pooled 1280-d"}
    return data


def describe(data: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, item in data.items():
        split = item["split"]
        y = np.asarray(split[1])
        out[key] = {"source": item["source"], "train": int(y.shape[0]), "test": int(np.asarray(split[3]).shape[0]),
                    "dim": int(np.asarray(split[0]).shape[1]),
                    "classes": int(y.shape[1]) if y.ndim == 2 else int(split.classes),
                    "feature_seconds": item.get("seconds")}
    return out


def markdown(record: dict[str, Any]) -> str:
    parts = []
    for name, section in record["sections"].items():
        parts.append(section_module(name).render(section))
    return "\n\n".join(parts)


def main(argv: list[str]) -> dict:
    p = parser("family", __doc__.splitlines()[0])
    p.add_argument("--render", default=None, help="print the Markdown tables of a record (family.json) and exit")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--fashion-train", type=int, default=None, help="first N training images (default 30000; "
                   "--quick 6000)")
    p.add_argument("--fashion-test", type=int, default=None, help="first M test images (default 10000; --quick 2000)")
    p.add_argument("--wordnet-per-class", type=int, default=None,
                   help="cap on synsets per supersense (default 600; --quick 150)")
    p.add_argument("--mosaic-train", type=int, default=None, help="training mosaics (default 12000; --quick 4000)")
    p.add_argument("--mosaic-test", type=int, default=None, help="test mosaics (default 3000; --quick 1000)")
    p.add_argument("--cache", default=None, help="feature cache folder (default $ANALYTIC_CACHE or "
                   "~/.cache/analytic-learning/features)")
    args = p.parse_args(argv)
    if args.render:
        record = json.loads(Path(args.render).read_text())
        record = record.get("figures", record)  # write_results wraps the figures with the command and machine
        print(markdown(record))
        return record
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(sections) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    import jax

    jax.config.update("jax_enable_x64", True)
    quick = args.quick
    size = "quick" if quick else "full"
    args.fashion_train = args.fashion_train or (6000 if quick else 30000)
    args.fashion_test = args.fashion_test or (2000 if quick else 10000)
    args.wordnet_per_class = args.wordnet_per_class or (150 if quick else 600)
    args.mosaic_train = args.mosaic_train or MOSAICS[size][0]
    args.mosaic_test = args.mosaic_test or MOSAICS[size][1]
    stem = "family_quick" if quick else "family"
    if sections != list(SECTIONS):
        stem += "_" + "_".join(sections)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args, sections)
    record: dict[str, Any] = {"quick": quick, "data": describe(data), "sections": {}, "seconds": {}}
    for name in sections:
        t0 = time.perf_counter()
        record["sections"][name] = section_module(name).run(data, quick, out, stem)
        record["seconds"][name] = time.perf_counter() - t0
        print(section_module(name).render(record["sections"][name]), flush=True)
    record["claims"] = [claim for s in record["sections"].values() for claim in s.get("claims", [])]
    print_table(record["claims"], ["method", "claim", "published", "ours", "holds"])
    path = write_results(stem, record, out)
    print(f"wrote {path}")
    return record
