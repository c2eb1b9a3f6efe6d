"""The `cam` verb: `python -m fracture cam` renders panels, or with --evaluate scores the maps."""

from __future__ import annotations

from pathlib import Path

from fracture.cam.checks import check_methods, spatial_layer
from fracture.cam.metrics import evaluate_localization
from fracture.cam.draw import check_look, default_images, render


def _expand(paths) -> list[Path]:
    from fracture.data import expand_image_paths

    return expand_image_paths(paths)


def _split(text) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def cli_cam(args) -> None:
    """`python -m fracture cam`: render panels, or with --evaluate score the maps (module doc)."""
    import pandas as pd

    from fracture.model import load_run

    methods = check_methods(_split(args.methods))
    check_look(args.colormap, args.alpha, args.scale)  # before the model loads: a typo answers at once
    layers = _split(args.layers)
    run = load_run(args.run)
    for name in layers:
        spatial_layer(run.model, name)
    if args.evaluate:
        table = evaluate_localization(run, methods, layers, limit=args.limit, split=args.split)
        print(f"CAM localization and faithfulness, run {run.name}, "
              f"{table['n_images'].iloc[0]} positive {args.split} images")
        print("(pointing game and energy in box: higher is better; deletion AUC: lower; insertion AUC: higher)")
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
                     alpha=args.alpha, scale=args.scale, dpi=args.dpi)
    folders = sorted({str(p.parent) for p in written})
    print(f"{len(written)} files for {len(folders)} images (target: {args.target}):")
    for folder in folders:
        print(f"  {folder}/panel.png")
