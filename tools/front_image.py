"""Draw README's picture, docs/img/front.jpg: a run's training curves beside one of its CAM panels.

    .venv/bin/python tools/front_image.py                      # the newest run with a panel (make demo)
    .venv/bin/python tools/front_image.py --run saved_models/<run> [--panel PATH] [--curves PATH]

The curves are the run's plots/curves.png; the panel is the first panel.png of an abnormal image
that `python -m fracture cam` wrote into layer_outputs/<run>/. Both are scaled to one height and
saved as one JPEG (quality 90, full colour resolution: the colormap stays readable at a tenth of
the size of a PNG).
"""

import argparse
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
HEIGHT = 640  # pixels: GitHub shows README images at most about 900 px wide, so 2x that in all
GAP = 24


def newest_run_with_a_panel() -> Path:
    runs = sorted((p.parent.parent for p in (ROOT / "layer_outputs").glob("*/*/panel.png")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    runs = [ROOT / "saved_models" / run.name for run in runs if (ROOT / "saved_models" / run.name).is_dir()]
    if not runs:
        raise SystemExit("no run with CAM panels: run `make demo` first (or pass --run, --panel, --curves)")
    return runs[0]


def first_abnormal_panel(run: Path) -> Path:
    panels = sorted((ROOT / "layer_outputs" / run.name).glob("*/panel.png"))
    abnormal = [p for p in panels if "positive" in p.parent.name] or panels
    if not abnormal:
        raise SystemExit(f"no panel.png in layer_outputs/{run.name}/: run `python -m fracture cam --run {run}`")
    return abnormal[0]


def side_by_side(left: Path, right: Path, out: Path) -> Path:
    images = [Image.open(p).convert("RGB") for p in (left, right)]
    images = [im.resize((round(im.width * HEIGHT / im.height), HEIGHT), Image.LANCZOS) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in images) + GAP, HEIGHT), "white")
    canvas.paste(images[0], (0, 0))
    canvas.paste(images[1], (images[0].width + GAP, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, "JPEG", quality=90, subsampling=0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder (default: the newest run with CAM panels)")
    parser.add_argument("--curves", type=Path, help="default: <run>/plots/curves.png")
    parser.add_argument("--panel", type=Path, help="default: the first abnormal image's panel of the run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "front.jpg")
    args = parser.parse_args()
    run = args.run or (None if args.curves and args.panel else newest_run_with_a_panel())
    curves = args.curves or run / "plots" / "curves.png"
    panel = args.panel or first_abnormal_panel(run)
    written = side_by_side(curves, panel, args.out)
    print(f"wrote {written} ({written.stat().st_size // 1024} KB) from {curves} and {panel}")


if __name__ == "__main__":
    main()
