"""Average fine-tunes of one model into one checkpoint (`train.soup`) and write it with its model card.

    python benchmarks/soup.py --out glacier_stac/checkpoints/candidates/unet_soup_4class.pt \\
        glacier_stac/checkpoints/candidates/unet_hist_4class.pt \\
        glacier_stac/checkpoints/candidates/unet_snowfit_4class.pt

Two fine-tunes of the same parent that each win on other worlds (here: the default's four-class model and its
fine-tune on the thermal-snow features) average into a model better than either on held-out worlds, at no
inference cost. The card lists the parts and their weights; the last part's provenance is kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glacier_stac import train
from glacier_stac.models.checkpoint import load, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", type=Path, nargs="+", help="checkpoints fine-tuned from one parent")
    ap.add_argument("--weights", default="", help="comma-separated, summing to 1 (default: equal)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError:
        raise SystemExit(f"--weights {args.weights!r}: write numbers summing to 1, e.g. 0.5,0.5") from None
    try:
        soup = train.soup([load(p) for p in args.parts], weights)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"soup: {e}") from None
    command = "python benchmarks/soup.py " + " ".join(sys.argv[1:])
    soup.command = command
    soup.metrics["soup"]["parts"] = [str(p) for p in args.parts]
    path = save(soup, args.out)
    parts = "\n".join(f"- {w:.3f} x `{p}`" for w, p in zip(soup.metrics["soup"]["weights"], args.parts, strict=True))
    path.with_suffix(".md").write_text(
        f"# Model card: `{path.stem}`\n\n- model: `{soup.model}` {soup.model_kwargs}\n- classes: {soup.classes}\n"
        f"- features ({len(soup.features)}): {', '.join(soup.features)}\n- made by: `{command}`\n\n"
        f"## Parts (weights averaged, `train.soup`)\n\n{parts}\n\nEach part's card gives its training data and "
        f"recipe.\n")
    print(path)


if __name__ == "__main__":
    main()
