"""The `cam` verb: render panels, score the maps (--evaluate), check them (--sanity).

The `cam` verb: `python -m fracture cam` renders panels, with --evaluate scores the maps, and
with --sanity checks that they change when the weights are randomized."""

from __future__ import annotations

from pathlib import Path

from fracture import portable
from fracture.cam.checks import check_methods, spatial_layer
from fracture.cam.draw import check_look, default_images, render
from fracture.cam.metrics import evaluate_localization
from fracture.cam.sanity import PASS_BELOW, sanity_check, verdicts
from fracture.data import expand_image_paths


def _expand(paths) -> list[Path]:
    return expand_image_paths(paths)


def _split(text) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def cli_cam(args) -> None:
    """`python -m fracture cam`: render panels, or with --evaluate score the maps (module doc)."""
    import pandas as pd

    from fracture.runs import load_run  # here, not at the top: it loads Keras, which this module does not

    methods = check_methods(_split(args.methods))
    check_look(args.colormap, args.alpha, args.scale)  # before the model loads: a typo answers at once

    layers = _split(args.layers)
    images, overrides = portable.split_overrides(args.images)  # `--images a.png data_dir=...` reads as meant
    args.images = images
    run = load_run(args.run)
    overrides = [*getattr(args, "overrides", []), *overrides]
    if overrides:  # e.g. data_dir=... for data that moved since training
        run.config = portable.with_overrides(run, overrides)
    if args.evaluate or getattr(args, "sanity", False) or not args.images:  # these read the run's data
        portable.require_data(run.config, run.path, "cam")
    for name in layers:
        spatial_layer(run.model, name)
    if getattr(args, "sanity", False):
        _sanity(run, methods, layers, args)
        return
    if args.evaluate:
        table = evaluate_localization(run, methods, layers, limit=args.limit, split=args.split,
                                      steps=getattr(args, "steps", 16))
        print(f"CAM localization and faithfulness, run {run.name}, "
              f"{table['n_images'].iloc[0]} positive {args.split} images")
        print("(pointing game and energy in box: higher is better; distractor peak (share of images whose map "
              "peaks on a side marker, ruler or text box) and distractor energy: lower; deletion AUC: lower; "
              "insertion AUC: higher)")
        with pd.option_context("display.width", 200):
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print("oracle: the true box averaged onto each layer's grid and upsampled "
              "(a perfect map at that resolution)")
        for layer, (grid, pointing, energy) in table.attrs.get("oracle", {}).items():
            print(f"  {layer:<20} {grid[0]}x{grid[1]}  pointing_game {pointing:.3f}  energy_in_box {energy:.3f}")
        print(f"written: {Path(run.path) / 'cam_eval.csv'}")
        if not args.images:
            return
    paths = _expand(args.images) if args.images else default_images(run, args.limit or 4, args.split)
    if args.limit:
        paths = paths[:args.limit]
    written = render(run, paths, layers, methods, out_dir=args.out, target=args.target, colormap=args.colormap,
                     alpha=args.alpha, scale=args.scale, dpi=args.dpi,
                     eigen_smooth=getattr(args, "eigen_smooth", False), aug_smooth=getattr(args, "aug_smooth", False),
                     ig_baseline=getattr(args, "ig_baseline", "blurred"))
    folders = sorted({p.parent for p in written})
    print(f"{len(written)} files for {len(folders)} images (target: {args.target}):")
    for folder in folders:
        for panel in sorted(p for p in written if p.parent == folder and p.name.startswith("panel")):
            print(f"  {panel}")


def _sanity(run, methods, layers, args) -> None:
    """--sanity: the weight-randomization cascade (fracture/cam/sanity.py), its table and verdicts."""
    import pandas as pd

    table = sanity_check(run, methods, layers, limit=args.limit, split=args.split, target=args.target)
    print(f"CAM sanity check, run {run.name}: weights randomized from the top down, maps compared with "
          f"the trained model's on {args.split} images")
    print("(spearman: rank correlation of the maps as drawn; spearman_abs: of |map before ReLU|; "
          "ssim: structural similarity; lower = the map depends more on the weights)")
    with pd.option_context("display.width", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for (method, layer), (rho, passed) in verdicts(table).items():
        print(f"  {method:<19} {layer:<20} all randomized: spearman {rho:.3f} -> "
              f"{'passes' if passed else 'FAILS'} (needs < {PASS_BELOW})")
    print(f"written: {Path(run.path) / 'cam_sanity.csv'}, {Path(run.path) / 'plots' / 'cam_sanity.png'}")
